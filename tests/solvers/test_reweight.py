"""Weighted and reweighted l1: the ADMM against CVXPY + Clarabel, and every round within the budget."""

import dataclasses

import numpy as np
import pytest

import solvers
from instances import random_problem
from solvers.reweight import reweighted_l1_weights, solve_reweighted

CASES = [dict(per_neuron=True), dict(per_neuron=False), dict(per_neuron=True, activation="linear"),
         dict(per_neuron=True, cascade=True), dict(per_neuron=False, cascade=True)]


@pytest.mark.parametrize("seed", range(len(CASES)))
def test_weighted_admm_matches_clarabel(seed):
    problem = random_problem(seed, N=30, P=200, M=6, g=0.2, density=0.6, **CASES[seed])
    weights = np.random.default_rng(seed).uniform(0.1, 3.0, (30, 6))
    weighted = dataclasses.replace(problem, l1_weights=weights)
    ours = solvers.solve(weighted, dtype="float64", rel_tol=1e-6)
    reference = solvers.solve(weighted, backend="cvxpy")
    assert ours.status == reference.status == "optimal"
    assert ours.objective == pytest.approx(reference.objective, rel=5e-3)
    assert ours.objective == pytest.approx(float((weights * np.abs(ours.U)).sum()), rel=1e-12)
    assert np.all(weighted.columns_within_budget(ours.U))


@pytest.mark.parametrize("seed", range(len(CASES)))
@pytest.mark.parametrize("backend", ["admm", "cvxpy"])
def test_reweighting_sparsifies_within_the_same_budget(seed, backend):
    problem = random_problem(seed, N=30, P=200, M=6, g=0.2, density=0.6, **CASES[seed])
    result = solvers.solve(problem, backend=backend, reweight=3)
    rounds = result.info["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2, 3]
    assert result.nonzeros < rounds[0]["nonzeros"]
    assert result.objective == pytest.approx(np.abs(result.U).sum())  # reported on the plain program
    assert np.all(problem.columns_within_budget(result.U))


def test_the_reweighted_result_keeps_the_plain_programs_certified_bound():
    """The weighted rounds' bounds are on other objectives: the one returned is round 0's, below the plain
    program's optimum (Clarabel's), so the reweighted U's l1 is measured against the l1 optimum."""
    problem = random_problem(1, N=30, P=200, M=6, g=0.2, density=0.6, per_neuron=True)
    plain = solvers.solve(problem)
    reweighted = solvers.solve(problem, reweight=2)
    optimum = np.abs(solvers.solve(problem, backend="cvxpy").U).sum(axis=0)
    np.testing.assert_array_equal(reweighted.info["l1_lower_bound"], plain.info["l1_lower_bound"])
    assert np.all(reweighted.info["l1_lower_bound"] <= optimum * (1 + 1e-6))
    assert 0 <= plain.certified_gap <= reweighted.certified_gap


def test_reweighted_admm_and_clarabel_reach_similar_sparsity():
    problem = random_problem(0, N=30, P=200, M=6, g=0.2, density=0.6, per_neuron=True)
    ours = solvers.solve(problem, reweight=2, dtype="float64", rel_tol=1e-6)
    reference = solvers.solve(problem, backend="cvxpy", reweight=2)
    reference_nonzeros = int((np.abs(reference.U) > 1e-7 * np.abs(reference.U).max()).sum())
    assert abs(ours.nonzeros - reference_nonzeros) <= 2


def test_a_column_that_misses_its_budget_in_a_round_keeps_the_previous_one():
    problem = random_problem(1, N=30, P=200, M=6, g=0.2, density=0.6, per_neuron=True)

    def solve_once(program, initial):
        result = solvers.solve(program)
        if initial is not None:  # the reweighted round "fails" on neuron 2: all-zero weights miss its budget
            result.U[:, 2] = 0.0
        return result

    first = solvers.solve(problem)
    result = solve_reweighted(problem, solve_once, 1)
    assert result.info["rounds"][1]["columns_kept_from_previous_round"] == 1
    np.testing.assert_array_equal(result.U[:, 2], first.U[:, 2])
    assert np.all(problem.columns_within_budget(result.U))
    assert result.nonzeros < first.nonzeros


def test_weights_make_large_entries_cheap_and_zeros_expensive():
    U = np.array([[1.0, 0.0], [0.0, 2.0], [0.5, 0.0]])
    weights = reweighted_l1_weights(U, 0.1)
    assert weights[1, 0] > weights[2, 0] > weights[0, 0]
    assert (weights * np.abs(U)).sum() == pytest.approx(np.abs(U).sum())


@pytest.mark.parametrize(("options", "message"), [
    (dict(reweight=-1), "reweight must be"), (dict(reweight=1, delta=0.0), "delta must be"),
    (dict(initial=np.zeros((3, 3))), "initial must be"),
])
def test_bad_reweighting_options(options, message):
    with pytest.raises(ValueError, match=message):
        solvers.solve(random_problem(0, per_neuron=True), **options)


def test_bad_l1_weights():
    problem = random_problem(0)
    with pytest.raises(ValueError, match="l1_weights must be"):
        dataclasses.replace(problem, l1_weights=np.ones((2, 2)))
    with pytest.raises(ValueError, match="l1_weights must be >= 0"):
        dataclasses.replace(problem, l1_weights=-np.ones((24, 5)))
