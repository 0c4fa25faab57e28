"""The budget bisection on a synthetic monotone sparsity curve."""

from types import SimpleNamespace

import numpy as np
import pytest

from nettrim.target import DESCENT, GROWTH, smallest_budget, sparsity


def _solver(threshold_of_g, calls):
    """Weights with round(100 * min(g / 0.4, 1)) zeros out of 100: sparsity = g / 0.4, a monotone curve."""
    def solve_at(g, initial):
        calls.append((g, initial is not None))
        zeros = int(round(100 * min(threshold_of_g(g), 1.0)))
        return SimpleNamespace(U=np.r_[np.zeros(zeros), np.ones(100 - zeros)])
    return solve_at


def test_bisection_finds_the_smallest_budget_and_warm_starts():
    calls = []
    search = smallest_budget(0.5, _solver(lambda g: g / 0.4, calls), g_low=0.0, g_first=0.05, g_max=1.0)
    assert search.reached and sparsity(search.outcome.U) >= 0.5
    assert search.g == pytest.approx(0.2, rel=0.05)
    assert calls[0] == (0.05, False) and all(warm for _, warm in calls[1:])
    assert len(calls) <= 10


def test_first_guess_that_reaches_the_target_is_refined_downward():
    search = smallest_budget(0.25, _solver(lambda g: g / 0.4, []), g_low=0.0, g_first=0.3, g_max=1.0)
    assert search.g == pytest.approx(0.1, rel=0.05)


def test_unreachable_target_returns_g_max():
    search = smallest_budget(0.9, _solver(lambda g: g, []), g_low=0.0, g_first=0.1, g_max=0.5)
    assert not search.reached and search.g == 0.5 and sparsity(search.outcome.U) == 0.5


def test_a_target_reached_at_every_budget_stops_after_the_descent():
    """Sparsity 0.6 at every g (a layer with fewer samples than inputs): the search divides the first guess
    DESCENT times, keeps the smallest g tried and stops, instead of chasing g toward 0, where the solves
    converge ever more slowly."""
    calls = []
    search = smallest_budget(0.4, _solver(lambda g: 0.6, calls), g_low=0.0, g_first=0.32, g_max=1.0)
    assert search.reached and search.g == pytest.approx(0.32 / GROWTH ** DESCENT)
    assert len(calls) == 1 + DESCENT


def test_a_target_reached_at_g_low_keeps_g_low():
    calls = []
    search = smallest_budget(0.4, _solver(lambda g: 0.6, calls), g_low=0.1, g_first=0.32, g_max=1.0)
    assert search.reached and search.g == 0.1 and [g for g, _ in calls] == [0.32, 0.16, 0.1]


@pytest.mark.parametrize(("first", "kept", "reached"), [(0.05, 0.1, False), (0.3, 0.3, True)])
def test_a_search_told_to_stop_keeps_what_it_has_and_says_it_stopped(first, kept, reached):
    """After two solves: below the target, the largest g tried (not reached); above it, the smallest that reaches."""
    calls = []
    search = smallest_budget(0.5, _solver(lambda g: g / 0.4, calls), g_low=0.0, g_first=first, g_max=1.0,
                             stop=lambda: len(calls) >= 2)
    assert len(calls) == 2 and search.stopped and search.reached == reached
    assert search.g == pytest.approx(kept if reached else max(g for g, _ in calls))
    assert smallest_budget(0.5, _solver(lambda g: g / 0.4, []), g_low=0.0, g_first=first, g_max=1.0).stopped is False
