"""The rows' group norm (structure="rows", neuron trimming): the ADMM's group soft threshold against the CVXPY +
Clarabel oracle (sum of row norms), on every budget form, on the GPU's stand-ins, reweighted, and refused where
it does not apply."""

import dataclasses

import numpy as np
import pytest

from instances import random_problem
from solvers import LayerProblem, relative_budget, solve
from solvers.memory import memory_limit_for
from solvers.reweight import reweighted_group_weights

CASES = [  # (activation, per_neuron, cascade)
    ("relu", True, False),
    ("relu", False, False),
    ("relu", True, True),
    ("relu", False, True),
    ("linear", True, False),
    ("linear", False, False),
]


def rows_problem(seed, **kwargs) -> LayerProblem:
    return dataclasses.replace(random_problem(seed, **kwargs), structure="rows")


def _zero_rows(U) -> int:
    return int(np.sum(~np.any(U, axis=1)))


def _matches_the_oracle(result, reference, problem):
    assert result.status == "optimal", result.message
    assert result.objective == pytest.approx(reference.objective, rel=5e-3)
    assert problem.columns_within_budget(result.U, fit_rtol=1e-9, violation_tol=1e-5).all()
    assert result.info["l1_lower_bound"] <= reference.objective * (1 + 1e-6)  # a valid bound
    assert result.info["l1_lower_bound"] >= reference.objective * (1 - 5e-3)  # and a tight one


@pytest.mark.parametrize("case", CASES, ids=["-".join(map(str, case)) for case in CASES])
def test_the_group_admm_matches_the_sum_of_norms_oracle(case):
    activation, per_neuron, cascade = case
    problem = rows_problem(CASES.index(case), N=30, P=150, M=8, activation=activation, per_neuron=per_neuron,
                           cascade=cascade, g=0.2)
    reference = solve(problem, backend="cvxpy")
    assert reference.status == "optimal"
    result = solve(problem)
    _matches_the_oracle(result, reference, problem)
    assert result.objective == pytest.approx(problem.objective(result.U))
    assert result.objective == pytest.approx(np.linalg.norm(result.U, axis=1).sum())
    # Whole rows are zero: the zero rows the oracle finds (up to its rounding) are zero in the ADMM's answer.
    oracle_zero = np.linalg.norm(reference.U, axis=1) <= 1e-6 * np.linalg.norm(reference.U, axis=1).max()
    assert np.all(~np.any(result.U[oracle_zero], axis=1))


def test_the_rows_objective_removes_inputs_that_l1_only_thins():
    """Inputs in near-duplicate pairs: l1 picks a copy per neuron, the rows' norm one copy for every neuron (at
    the default gap_tol, 0.5%, the ADMM stops with 2 of the oracle's 4 zero rows; at 0.1% it has all 4)."""
    rng = np.random.default_rng(0)
    features = rng.standard_normal((12, 200))
    X = np.vstack([features, features + 0.05 * rng.standard_normal(features.shape), np.ones((1, 200))])
    W = rng.standard_normal((25, 10))
    W[-1] = 0.2
    Y = np.maximum(W.T @ X, 0.0)
    problem = LayerProblem(X, Y, relative_budget(Y, 0.1, per_neuron=True), original_weights=W)
    plain = solve(problem)
    rows = solve(dataclasses.replace(problem, structure="rows"), gap_tol=1e-3)
    assert rows.status == plain.status == "optimal"
    assert _zero_rows(rows.U) >= 4 > _zero_rows(plain.U)
    oracle = solve(dataclasses.replace(problem, structure="rows"), backend="cvxpy")
    assert np.sum(np.linalg.norm(oracle.U, axis=1) > 1e-6) == 25 - _zero_rows(rows.U)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_the_group_admm_on_the_device(device, dtype):
    problem = rows_problem(2, N=24, P=150, M=6, per_neuron=True, cascade=True, g=0.2)
    reference = solve(problem, backend="cvxpy")
    on_device = solve(problem, device=device, dtype=dtype)
    _matches_the_oracle(on_device, reference, problem)
    assert on_device.objective == pytest.approx(solve(problem, dtype=dtype).objective, rel=1e-3)


@pytest.mark.parametrize("per_neuron", [True, False])
def test_groups_of_rows_match_the_oracle(per_neuron):
    """Groups of 4 rows (a conv's 2 x 2 kernel per input channel) and the bias row alone: 6 + 1 groups, each
    equilibrated alike, with weights; zero groups are whole channels."""
    rng = np.random.default_rng(6)
    X = np.vstack([rng.standard_normal((24, 160)) * rng.uniform(0.5, 2.0, (24, 1)), np.ones((1, 160))])
    W = rng.standard_normal((25, 6))
    W[4:8] *= 0.002
    W[16:20] *= 0.002
    Y = np.maximum(W.T @ X, 0.0)
    problem = LayerProblem(X, Y, relative_budget(Y, 0.1, per_neuron=per_neuron), original_weights=W,
                           structure="rows", group_size=4, group_weights=np.linspace(1.0, 2.0, 7))
    reference, result = solve(problem, backend="cvxpy"), solve(problem)
    _matches_the_oracle(result, reference, problem)
    norms = [np.linalg.norm(result.U[4 * g:4 * g + 4]) for g in range(6)]
    assert result.objective == pytest.approx(np.linspace(1.0, 2.0, 7) @ [*norms, np.linalg.norm(result.U[24])])
    oracle_zero = [np.linalg.norm(reference.U[4 * g:4 * g + 4]) <= 1e-6 * np.abs(reference.U).max() for g in range(6)]
    assert [not result.U[4 * g:4 * g + 4].any() for g in range(6)] == oracle_zero
    assert oracle_zero[4]  # a channel the response barely uses


def test_weighted_rows_match_the_oracle_and_reweighting_removes_more_rows():
    problem = rows_problem(4, N=30, P=150, M=8, per_neuron=True, g=0.3)
    weights = np.linspace(0.5, 2.0, 30)
    weighted = dataclasses.replace(problem, group_weights=weights)
    reference, result = solve(weighted, backend="cvxpy"), solve(weighted)
    _matches_the_oracle(result, reference, weighted)
    assert result.objective == pytest.approx(weights @ np.linalg.norm(result.U, axis=1))
    plain, reweighted = solve(problem), solve(problem, reweight=2)
    assert reweighted.status == "optimal"
    assert problem.columns_within_budget(reweighted.U).all()
    assert _zero_rows(reweighted.U) > _zero_rows(plain.U)
    assert reweighted.info["rounds"][-1]["nonzero_rows"] == 30 - _zero_rows(reweighted.U)


def test_reweighted_group_weights_make_the_previous_rows_cost_what_they_did():
    U = np.array([[3.0, 4.0], [0.0, 0.0], [0.6, 0.8]])
    weights = reweighted_group_weights(U, 0.1)
    norms = np.array([5.0, 0.0, 1.0])
    assert weights @ norms == pytest.approx(norms.sum())
    assert weights[1] > weights[2] > weights[0]  # the zero row is dearest, the largest row cheapest


def test_the_neurons_of_a_rows_program_are_never_split_into_chunks():
    problem = rows_problem(8, N=60, P=200, M=6, per_neuron=True)
    with pytest.raises(ValueError, match="rows' objective .* couples the neurons"):
        solve(problem, memory_limit=memory_limit_for(problem, 2))
    assert solve(problem, memory_limit=memory_limit_for(problem, 6)).status == "optimal"


def test_a_screened_neuron_keeps_the_rows_program_optimal():
    problem = rows_problem(5, N=24, P=150, M=5, per_neuron=True, dead_neurons=2)
    result, reference = solve(problem), solve(problem, backend="cvxpy")
    assert result.info["screened_neurons"] == 2
    _matches_the_oracle(result, reference, problem)
    assert not result.U[:, :2].any()


def test_bad_structures_are_refused_by_name():
    problem = random_problem(0)
    with pytest.raises(ValueError, match="structure must be one of"):
        dataclasses.replace(problem, structure="neurons")
    with pytest.raises(ValueError, match="group_weights and group_size only apply to structure='rows'"):
        dataclasses.replace(problem, group_weights=np.ones(24))
    with pytest.raises(ValueError, match="group_size must be a positive int"):
        dataclasses.replace(problem, structure="rows", group_size=0)
    with pytest.raises(ValueError, match="group_weights must be"):
        dataclasses.replace(problem, structure="rows", group_weights=np.ones(3))
    with pytest.raises(ValueError, match="l1_weights only apply to structure='weights'"):
        dataclasses.replace(problem, structure="rows", l1_weights=np.ones((24, 5)))
