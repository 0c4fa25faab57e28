"""solvers/memo.py: a result computed from an array is kept while the array lives and recomputed when it changes."""

import gc

import numpy as np

from solvers import memo


def test_computed_once_per_live_array_and_again_after_a_change():
    calls = []

    @memo.per_array
    def total(X):
        calls.append(1)
        return float(X.sum())

    X = np.arange(12.0).reshape(3, 4)
    assert total(X) == total(X) == 66.0 and len(calls) == 1
    X[0, 0] = 100.0  # a sampled entry (the first) changed in place
    assert total(X) == 166.0 and len(calls) == 2
    assert total(X.copy()) == 166.0 and len(calls) == 3  # another array: computed for it
    del X
    gc.collect()
    assert total(np.zeros((3, 4))) == 0.0 and len(calls) == 4  # a dead array's result is not reused


def test_a_result_of_several_arrays_is_kept_for_that_combination():
    calls = []

    @memo.per_array
    def product(X, Y):
        calls.append(1)
        return X @ Y.T

    X, Y = np.arange(6.0).reshape(2, 3), np.ones((4, 3))
    np.testing.assert_array_equal(product(X, Y), product(X, Y))
    assert len(calls) == 1
    assert product(X, 2 * Y)[0, 0] == 6.0 and len(calls) == 2  # another Y
    Y[0, 0] = 5.0  # a sampled entry of one of them changed in place
    assert product(X, Y)[0, 0] == 3.0 and len(calls) == 3
    del Y
    gc.collect()
    assert product(X, np.zeros((1, 3)))[0, 0] == 0.0 and len(calls) == 4


def test_a_budget_search_computes_the_row_space_and_the_equal_rows_once(monkeypatch):
    """Programs that share X (a budget search) share its row space (sufficient.py) and its distinct rows."""
    from solvers import LayerProblem, copies, solve, sufficient

    counted = {"row_space": 0, "find_copies": 0}
    for module, name in ((sufficient, "row_space"), (copies, "find_copies")):
        inner = getattr(module, name).__wrapped__ if name == "row_space" else getattr(module, name)

        def spy(X, inner=inner, name=name):
            counted[name] += 1
            return inner(X)

        monkeypatch.setattr(module, name, memo.per_array(spy) if name == "row_space" else spy)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((6, 400))
    X = np.vstack([X, X[:2], np.ones((1, 400))])  # two equal rows
    W = rng.standard_normal((9, 3))
    for g in (0.05, 0.1, 0.2):
        Y = W.T @ X
        solve(LayerProblem(X, Y, g * np.linalg.norm(Y, axis=1), "linear", original_weights=W))
    assert counted == {"row_space": 1, "find_copies": 1}
