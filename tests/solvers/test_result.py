"""LayerResult.info has a written schema (solvers/result.py: ResultInfo): every key a backend fills is in it."""

import numpy as np
import pytest

import solvers
from solvers.memory import memory_limit_for
from solvers.result import ResultInfo


def problem(per_neuron=True, relu=True, copies=False):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((12, 80))
    if copies:
        X[1] = X[0]
    Z = rng.standard_normal((4, 12)) @ X
    Y = np.maximum(Z, 0) if relu else Z
    eps = 0.1 * (np.linalg.norm(Y, axis=1) if per_neuron else np.linalg.norm(Y))
    return solvers.LayerProblem(X, Y, eps, activation="relu" if relu else "linear")


@pytest.mark.parametrize(("program", "options"), [
    (problem(), {}), (problem(per_neuron=False), {}), (problem(relu=False), {}), (problem(copies=True), {}),
    (problem(), {"reweight": 1}), (problem(), {"memory_limit": memory_limit_for(problem(), 2)}),
    (problem(), {"backend": "cvxpy"})])
def test_every_info_key_is_documented(program, options):
    result = solvers.solve(program, **options)
    assert set(result.info) <= set(ResultInfo.__annotations__), set(result.info) - set(ResultInfo.__annotations__)


@pytest.mark.parametrize("on_supports", [True, False])
def test_optimal_means_within_the_users_gap_tol_and_the_widened_acceptances_say_suboptimal(on_supports, monkeypatch):
    """Past gap_patience a neuron is accepted under a tolerance that grows with the iterations: those whose l1 is
    not within gap_tol of their certified bound are "suboptimal", counted as such, and no "optimal" one is. Such
    neurons are first solved on their supports to gap_tol (acceptance.py), which proves every one of these
    (on_supports); where the interior point proves nothing, they end "suboptimal"."""
    import solvers
    from solvers import LayerProblem, support_ipm
    from solvers.problem import column_l1

    if not on_supports:
        monkeypatch.setattr(support_ipm, "solve_on_support", lambda *args: None)
    counts = {"optimal": 0, "suboptimal": 0}
    for seed in range(3):
        rng = np.random.default_rng(seed)
        X = rng.standard_normal((60, 400))
        W = rng.standard_normal((60, 12)) * (rng.random((60, 12)) < 0.3)
        Y = np.maximum(W.T @ X, 0)
        problem = LayerProblem(X, Y, 0.05 * np.linalg.norm(Y, axis=1), activation="relu", original_weights=W)
        result = solvers.solve(problem, gap_patience=50, gap_tol=1e-4)
        statuses, bound, l1 = result.info["neuron_statuses"], result.info["l1_lower_bound"], column_l1(result.U)
        optimal = statuses == "optimal"
        absolute = 1e-6 * column_l1(W).max()  # at least admm.ABSOLUTE_GAP times the layer's objective scale
        assert np.all(l1[optimal] - bound[optimal] <= 1e-4 * l1[optimal] + absolute)
        assert result.info["neuron_status"]["suboptimal"] == int(np.sum(statuses == "suboptimal"))
        for status in counts:
            counts[status] += int(np.sum(statuses == status))
    assert counts["optimal"] > 0
    assert counts["suboptimal"] == 0 if on_supports else counts["suboptimal"] > 0
