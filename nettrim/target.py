"""Target sparsity: the smallest relative budget g whose trimmed layer reaches a sparsity, by bisection.

Sparsity grows with the budget (a larger eps admits every U a smaller one does, so the optimum's l1 can only
fall), so the smallest g in [g_low, g_max] with sparsity(U(g)) >= target is found by bisection, each solve warm
started from the solution at the nearest budget already tried. When even g_max does not reach the target, the
layer keeps the g_max solution and the search says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class BudgetSearch:
    g: float                 # the budget kept
    outcome: object          # what solve_at returned for it
    reached: bool            # did it reach the target?
    evaluations: list        # (g, sparsity) in the order tried


def sparsity(U: np.ndarray) -> float:
    return 1.0 - np.count_nonzero(U) / U.size


def smallest_budget(target: float, solve_at, *, g_low: float, g_first: float, g_max: float, steps: int = 8,
                    rel_width: float = 0.02, close_enough: float | None = None,
                    measure=lambda outcome: sparsity(outcome.U)) -> BudgetSearch:
    """Bisection for the smallest g with measure(outcome) >= target. solve_at(g, initial) returns an outcome
    (by default its `.U`, the trimmed weights, is measured); `initial` is the closest budget's outcome tried so
    far (None at first). The search stops when the bracket is narrower than rel_width * g, or (close_enough
    given) when the g kept measures at most close_enough above the target."""
    tried: dict[float, object] = {}
    measured: dict[float, float] = {}
    order = []

    def evaluate(g: float):
        closest = min(tried, key=lambda h: abs(h - g)) if tried else None
        outcome = solve_at(g, None if closest is None else tried[closest])
        tried[g], measured[g] = outcome, measure(outcome)
        order.append((g, measured[g]))
        return measured[g] >= target

    g_first = min(max(g_first, g_low), g_max)
    if evaluate(g_first):
        low, high = g_low, g_first
    else:
        low, high = g_first, g_max
        if g_max > g_first and not evaluate(g_max):
            return BudgetSearch(g_max, tried[g_max], False, order)
        if g_max == g_first:
            return BudgetSearch(g_first, tried[g_first], False, order)
    for _ in range(steps):
        if high - low <= rel_width * high or (close_enough is not None and measured[high] - target <= close_enough):
            break
        middle = 0.5 * (low + high)
        if evaluate(middle):
            high = middle
        else:
            low = middle
    return BudgetSearch(high, tried[high], True, order)
