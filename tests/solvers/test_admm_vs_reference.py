"""The ADMM against CVXPY + Clarabel at high accuracy (the oracle), on random instances of every kind."""

import numpy as np
import pytest

from instances import random_problem
from solvers import solve

CASES = [  # (activation, per_neuron, N, P, M, dead_neurons, cascade, g)
    ("relu", False, 24, 120, 5, 0, False, 0.1),
    ("relu", True, 24, 120, 5, 0, False, 0.1),
    ("relu", False, 40, 25, 4, 0, False, 0.05),      # P < N
    ("relu", True, 40, 25, 4, 0, False, 0.05),
    ("relu", False, 16, 600, 4, 0, False, 0.2),      # P >> N
    ("relu", True, 16, 600, 4, 0, False, 0.2),
    ("relu", True, 24, 150, 6, 2, False, 0.1),       # neurons with empty Omega
    ("relu", False, 24, 150, 6, 2, False, 0.1),
    ("relu", False, 24, 150, 5, 0, True, 0.05),      # cascade: nonzero V
    ("relu", True, 24, 150, 5, 0, True, 0.05),
    ("relu", True, 40, 30, 4, 1, True, 0.1),         # cascade, P < N, a dead neuron
    ("linear", False, 24, 120, 5, 0, False, 0.1),
    ("linear", True, 24, 120, 5, 0, False, 0.1),
    ("linear", False, 40, 25, 4, 0, False, 0.05),
    ("linear", True, 40, 25, 4, 0, False, 0.05),
    ("linear", False, 16, 600, 4, 0, False, 0.2),
    ("linear", True, 16, 600, 4, 0, False, 0.2),
    ("linear", True, 24, 120, 5, 2, False, 0.1),     # zero outputs
    ("relu", True, 30, 200, 8, 0, False, 0.02),
    ("relu", False, 30, 200, 8, 0, False, 0.3),
    ("linear", False, 30, 200, 8, 0, False, 0.02),
    ("relu", True, 60, 300, 3, 0, False, 0.1),
]


def _id(case):
    activation, per_neuron, N, P, M, dead, cascade, g = case
    return f"{activation}-{'vec' if per_neuron else 'scalar'}-N{N}-P{P}-M{M}-dead{dead}-{'V' if cascade else 'V0'}-g{g}"


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_admm_matches_clarabel(case, dtype):
    activation, per_neuron, N, P, M, dead, cascade, g = case
    problem = random_problem(CASES.index(case), N=N, P=P, M=M, activation=activation, per_neuron=per_neuron,
                             dead_neurons=dead, cascade=cascade, g=g)
    reference = solve(problem, backend="cvxpy", solver="CLARABEL")
    assert reference.status == "optimal", reference.message
    result = solve(problem, backend="admm", dtype=dtype)
    assert result.status == "optimal", result.message
    assert result.objective == pytest.approx(reference.objective, rel=5e-3)
    y_scale = np.abs(problem.Y).max()
    assert np.all(np.asarray(result.fit) <= np.asarray(problem.eps) * (1 + 1e-3))
    assert result.max_violation <= 1e-5 * y_scale
    # Proposition 1 on the returned U, where V = 0 makes it the promise (relu(U^T X) within eps of Y).
    if not cascade:
        assert np.all(np.asarray(result.response_error) <= np.asarray(problem.eps) * (1 + 1e-3))
    if dead and activation == "relu" and per_neuron and not cascade:  # u = 0 is feasible only when V >= 0
        assert np.all(result.U[:, :dead] == 0)
    # The certified lower bound (weak duality) never exceeds the oracle's optimum, per neuron, and is tight.
    bound = result.info["l1_lower_bound"]
    optimum = np.abs(reference.U).sum(axis=0) if per_neuron else reference.objective
    assert np.all(bound <= optimum * (1 + 1e-6) + 1e-9)
    assert np.sum(bound) >= result.objective * (1 - 1e-2)
    assert result.certified_gap == pytest.approx(1 - np.sum(bound) / result.objective, rel=1e-12)
    # The reported numbers are those of the returned U.
    measured = problem.evaluate(result.U)
    assert result.objective == pytest.approx(measured["objective"], rel=1e-12)
    np.testing.assert_allclose(result.fit, measured["fit"], rtol=1e-12)
