"""Nearly dead neurons (solvers/cutting_planes.py): solved by cutting planes to the oracle's optimum, with a
certified bound, on the host whatever the device; left to the ADMM when the planes do not get there."""

import numpy as np
import pytest

from instances import random_problem
from solvers import PUBLISHED_OPTIONS, LayerProblem, relative_budget, solve
from solvers import cutting_planes as planes
from solvers.problem import column_l1


def nearly_dead_problem(seed: int = 0, active_samples=(1, 5), cascade: bool = False) -> LayerProblem:
    """A relu layer (N = 20, P = 1,500, 4 neurons, per-neuron budgets g = 0.05) whose first neurons respond on
    only `active_samples` samples each: their bias is lowered until just that many stay positive."""
    base = random_problem(seed, N=20, P=1500, M=4, per_neuron=True, g=0.05)
    W, X = base.original_weights.copy(), base.X
    for m, count in enumerate(active_samples):
        response = W[:, m] @ X
        W[-1, m] -= 0.5 * (np.sort(response)[-count] + np.sort(response)[-count - 1])
    Y = np.maximum(W.T @ X, 0)
    if not cascade:
        return LayerProblem(X, Y, relative_budget(Y, 0.05, per_neuron=True), original_weights=W)
    Xhat = X + 0.01 * np.random.default_rng(seed).standard_normal(X.shape) * (np.arange(20) < 19)[:, None]
    upper = W.T @ Xhat
    gap = np.where(Y > 0, upper - Y, 0.0)
    eps = np.sqrt(1.1 * (gap**2).sum(axis=1) + (0.05 * np.linalg.norm(Y, axis=1)) ** 2)
    return LayerProblem(Xhat, Y, eps, upper=upper, original_weights=W)


def test_nearly_dead_neurons_are_those_active_on_few_samples():
    problem = nearly_dead_problem()
    assert problem.omega.sum(axis=1)[:2].tolist() == [1, 5]
    assert planes.nearly_dead(problem).tolist() == [True, True, False, False]
    layer_budget = LayerProblem(problem.X, problem.Y, relative_budget(problem.Y, 0.05))
    assert not planes.nearly_dead(layer_budget).any()
    linear = LayerProblem(problem.X, problem.Y, problem.eps, "linear")
    assert not planes.nearly_dead(linear).any()
    fewer_samples = LayerProblem(problem.X[:, :300], problem.Y[:, :300], problem.eps)  # 1% of 300 is 3 samples
    counts = fewer_samples.omega.sum(axis=1)
    np.testing.assert_array_equal(planes.nearly_dead(fewer_samples), (counts > 0) & (counts <= 3))


@pytest.mark.parametrize("cascade", [False, True])
def test_nearly_dead_neurons_reach_the_oracles_optimum(cascade):
    problem = nearly_dead_problem(cascade=cascade)
    result = solve(problem, dtype="float32")
    reference = solve(problem, backend="cvxpy", solver="CLARABEL")
    assert result.info["cutting_planes"] == 2
    assert result.info["neuron_statuses"].tolist() == ["optimal"] * 4
    assert problem.columns_within_budget(result.U, 0.0, 1e-5).all()
    ours, best = column_l1(result.U), column_l1(reference.U)
    np.testing.assert_allclose(ours[:2], best[:2], rtol=1e-5)
    bounds = result.info["l1_lower_bound"]
    assert np.all(bounds[:2] <= best[:2]) and np.all(bounds[:2] >= (1 - 1e-5) * best[:2])


def test_nearly_dead_neurons_on_the_device(device):
    """The planes run on the host's X whatever the device; the others iterate there and U comes back NumPy."""
    problem = nearly_dead_problem(1)
    on_host = solve(problem, dtype="float64")
    result = solve(problem, dtype="float64", device=device)
    assert isinstance(result.U, np.ndarray) and result.info["cutting_planes"] == 2
    np.testing.assert_allclose(result.U[:, :2], on_host.U[:, :2], rtol=1e-9, atol=1e-12)
    assert result.status == "optimal"


def test_a_neuron_the_planes_do_not_finish_is_left_to_the_admm(monkeypatch):
    monkeypatch.setattr(planes, "MAX_ROUNDS", 1)
    monkeypatch.setattr(planes, "FIRST", 1)
    problem = nearly_dead_problem(2)
    result = solve(problem, dtype="float64")
    reference = solve(problem, backend="cvxpy", solver="CLARABEL")
    assert result.info["cutting_planes"] == 0
    assert result.status == "optimal" and problem.columns_within_budget(result.U, 0.0, 1e-5).all()
    np.testing.assert_allclose(column_l1(result.U), column_l1(reference.U), rtol=1e-2)


def test_the_published_configuration_iterates_every_neuron():
    problem = nearly_dead_problem()
    result = solve(problem, **dict(PUBLISHED_OPTIONS, max_iter=50))
    assert result.info["cutting_planes"] == 0
