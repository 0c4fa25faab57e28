"""The repair on the found support (solvers/repair.py) against the Clarabel optimum it starts near."""

import numpy as np
import pytest

from instances import random_problem
from solvers import solve
from solvers.repair import repair_on_support


def _near_optimal_weights(seed, cascade=False):
    """One neuron's Clarabel optimum, pushed (on its support) over its Omega^c bound and near its budget."""
    problem = random_problem(seed, N=30, P=300, M=1, per_neuron=True, cascade=cascade, g=0.1)
    optimum = solve(problem, backend="cvxpy", solver="CLARABEL").U[:, 0]
    support = np.flatnonzero(np.abs(optimum) > 1e-8 * np.abs(optimum).max())
    w = np.zeros_like(optimum)
    w[support] = optimum[support] * (1 + 0.01 * np.random.default_rng(seed).standard_normal(support.size))
    # and over the bound by 1e-3 max|y| at its most active Omega^c sample q: w += alpha x_q on the support
    excess = np.where(problem.omega[0], -np.inf, w @ problem.X - (0.0 if problem.upper is None else problem.upper[0]))
    q = int(np.argmax(excess))
    direction = np.zeros_like(w)
    direction[support] = problem.X[support, q]
    w += (1e-3 * np.abs(problem.Y).max() - excess[q]) / (direction @ problem.X[:, q]) * direction
    return problem, w


@pytest.mark.parametrize("cascade", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_repair_puts_the_weights_within_budget_on_their_support(seed, cascade):
    problem, w = _near_optimal_weights(seed, cascade)
    upper = 0.0 if problem.upper is None else problem.upper[0]
    omega, y, eps = problem.omega[0], problem.Y[0], float(problem.eps[0])
    response = w @ problem.X
    assert np.max(np.where(omega, -np.inf, response - upper)) > 1e-4 * np.abs(y).max()  # it does violate
    tau = 1e-6 * np.abs(y).max()
    repaired = repair_on_support(np, problem.X, y, omega, upper, w, 0.9999 * eps, tau)
    assert repaired is not None
    assert set(np.flatnonzero(repaired)) <= set(np.flatnonzero(w))
    response = repaired @ problem.X
    assert np.all(np.where(omega, -np.inf, response - upper) <= 0)
    assert np.linalg.norm(np.where(omega, response - y, 0)) <= 0.9999 * eps
    assert np.abs(repaired).sum() == pytest.approx(np.abs(w).sum(), rel=2e-2)  # a small correction


def test_repair_refuses_a_budget_out_of_reach():
    problem, w = _near_optimal_weights(3)
    y, omega = problem.Y[0], problem.omega[0]
    assert repair_on_support(np, problem.X, y, omega, 0.0, w, 1e-9, 1e-6) is None
    assert repair_on_support(np, problem.X, y, omega, 0.0, np.zeros_like(w), 1.0, 1e-6) is None


def test_the_admm_with_and_without_repairs_reaches_the_same_optimum():
    problem = random_problem(21, N=40, P=400, M=6, per_neuron=True, g=0.05)
    reference = solve(problem, backend="cvxpy", solver="CLARABEL")
    repaired = solve(problem, dtype="float32")
    plain = solve(problem, dtype="float32", repair_misses=False)
    assert repaired.status == plain.status == "optimal"
    for result in (repaired, plain):
        assert result.objective == pytest.approx(reference.objective, rel=5e-3)
        assert problem.columns_within_budget(result.U, 0.0, 1e-5).all()
    assert plain.info["repaired"] == 0 and repaired.info["repaired"] > 0
    assert repaired.iterations <= plain.iterations
