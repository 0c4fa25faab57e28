"""Target sparsity: the smallest relative budget g whose trimmed layer reaches a sparsity.

Sparsity grows with the budget (a larger eps admits every U a smaller one does, so the optimum's l1 can only
fall), so the smallest g in [g_low, g_max] with sparsity(U(g)) >= target is found by bracketing it, each solve
warm started from the solution at the nearest budget already tried:

- from the first guess, g is multiplied (or divided) by GROWTH until one g reaches the target and one does not;
- then each new g interpolates the bracket's measured sparsities linearly in log g (sparsity grows about
  linearly in log g over the budgets that matter), at least SAFEGUARD of the bracket's log-width from either
  end; when the same end moved twice in a row, the next g is the bracket's geometric midpoint instead (the
  Illinois remedy for an interpolation that keeps landing on one side).

When even g_max does not reach the target, the layer keeps the g_max solution and the search says so. A search
told to `stop` (the layer's time is up) keeps the smallest g tried that reaches the target, or else the largest g
tried, and says it stopped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: The factor between successive guesses while the target is not yet bracketed.
GROWTH = 2.0
#: The most times a first guess that reaches the target is divided by GROWTH (then the smallest g tried is kept).
DESCENT = 6
#: The least share of the bracket's log-width between an interpolated g and either end of it.
SAFEGUARD = 0.1


@dataclass
class BudgetSearch:
    g: float                 # the budget kept
    outcome: object          # what solve_at returned for it
    reached: bool            # did it reach the target?
    evaluations: list        # (g, sparsity) in the order tried
    stopped: bool = False    # did `stop` end it before its bracket was narrow enough?


class _Stopped(Exception):
    """The search's `stop` said so before a solve."""


def sparsity(U: np.ndarray) -> float:
    return 1.0 - np.count_nonzero(U) / U.size


def smallest_budget(target: float, solve_at, *, g_low: float, g_first: float, g_max: float, steps: int = 8,
                    rel_width: float = 0.02, close_enough: float | None = None,
                    measure=lambda outcome: sparsity(outcome.U), stop=None) -> BudgetSearch:
    """The smallest g in [g_low, g_max] with measure(outcome) >= target (module docstring). solve_at(g, initial)
    returns an outcome (by default its `.U`, the trimmed weights, is measured); `initial` is the closest budget's
    outcome tried so far (None at first). The search stops after `steps` solves inside the bracket, when the
    bracket is narrower than rel_width * g, or (close_enough given) when the g kept measures at most close_enough
    above the target; or when stop() is true before a solve after the first (module docstring)."""
    tried: dict[float, object] = {}
    measured: dict[float, float] = {}
    order = []

    def reaches(g: float) -> bool:
        if tried and stop is not None and stop():
            raise _Stopped
        closest = min(tried, key=lambda h: abs(h - g)) if tried else None
        outcome = solve_at(g, None if closest is None else tried[closest])
        tried[g], measured[g] = outcome, measure(outcome)
        order.append((g, measured[g]))
        return measured[g] >= target

    try:
        return _searched(reaches, tried, measured, order, target, g_low, g_first, g_max, steps, rel_width,
                         close_enough)
    except _Stopped:
        reaching = [g for g in tried if measured[g] >= target]
        g = min(reaching) if reaching else max(tried)
        return BudgetSearch(g, tried[g], bool(reaching), order, stopped=True)


def _searched(reaches, tried, measured, order, target, g_low, g_first, g_max, steps, rel_width,
              close_enough) -> BudgetSearch:
    """smallest_budget's bracket and its narrowing, on `reaches` (which fills tried, measured and order)."""
    low, high = _bracket(reaches, min(max(g_first, g_low), g_max), g_low, g_max)
    if high is None:
        return BudgetSearch(low, tried[low], False, order)
    moved = []  # which end each step moved
    for _ in range(steps):
        if high - low <= rel_width * high or (close_enough is not None and measured[high] - target <= close_enough):
            break
        stuck = len(moved) >= 2 and moved[-1] == moved[-2]
        middle = _between(low, high, measured.get(low), measured[high], target, stuck)
        if reaches(middle):
            high = middle
            moved.append("high")
        else:
            low = middle
            moved.append("low")
    return BudgetSearch(high, tried[high], True, order)


def _bracket(reaches, g: float, g_low: float, g_max: float) -> tuple[float, float | None]:
    """(low, high): the tried g below the target nearest to it (g_low when none) and the least tried g that
    reaches it; high None (and low = g_max) when g_max does not; low = high when the target is reached at g_low
    or at every one of DESCENT divisions of the first guess (smaller budgets would only cost solves, each slower
    to converge than the last: the layer keeps the smallest g tried, sparser than asked)."""
    if reaches(g):
        high = g
        for _ in range(DESCENT):
            if high / GROWTH <= g_low:
                return (g_low, g_low) if g_low > 0 and reaches(g_low) else (g_low, high)
            if not reaches(high / GROWTH):
                return high / GROWTH, high
            high /= GROWTH
        return high, high
    while g < g_max:
        low, g = g, min(g * GROWTH, g_max) if g > 0 else g_max
        if reaches(g):
            return low, g
    return g_max, None


def _between(low: float, high: float, below: float | None, above: float, target: float, stuck: bool) -> float:
    """The next g inside (low, high): interpolated in log g between the measured ends (module docstring), or the
    geometric midpoint when `stuck` or when low is untried or zero (then the arithmetic one)."""
    if low <= 0:
        return 0.5 * (low + high)
    if stuck or below is None or above <= below:
        return math.sqrt(low * high)
    share = min(max((target - below) / (above - below), SAFEGUARD), 1 - SAFEGUARD)
    return math.exp(math.log(low) + share * (math.log(high) - math.log(low)))
