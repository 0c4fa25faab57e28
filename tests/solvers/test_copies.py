"""Inputs that are copies of one another (equal rows of X: upsampling pools, constant and dead features) are one
variable in solve(): the same optimum as the CVXPY + Clarabel oracle on the program as given, the weight on the
cheapest copy, and the same iteration constants for every block of neurons."""

import dataclasses

import numpy as np
import pytest

from instances import random_problem
from solvers import LayerProblem, copies, solve, solve_reference
from solvers.admm import iteration_constants
from solvers.blocks import block_options
from solvers.copies import find_copies, merge

#: Rows appended to X: copies of rows 3 and 7, another of 3, and two rows of zeros (one of them -0.0).
COPIED = (3, 7, 3)


def with_copies(problem: LayerProblem, **changes) -> LayerProblem:
    """`problem` with the rows COPIED and two zero rows inserted before the bias row; the new rows' original
    weights are 0, so the original weights keep their response (and their feasibility)."""
    X, W = problem.X, problem.original_weights
    P, M = problem.shape[1:]
    new_rows = np.vstack([X[list(COPIED)], np.zeros((1, P)), np.full((1, P), -0.0)])
    X = np.vstack([X[:-1], new_rows, X[-1:]])
    W = np.vstack([W[:-1], np.zeros((len(new_rows), M)), W[-1:]])
    return dataclasses.replace(problem, X=X, original_weights=W, **changes)


def test_equal_rows_are_found_and_distinct_ones_are_not():
    problem = random_problem(0, N=12, P=40)
    assert find_copies(problem.X) is None
    found = find_copies(with_copies(problem).X)
    N = problem.shape[0]
    assert found.first.tolist() == [*range(N - 1), N + 2, N + 4]  # the features, the zero row, the bias row
    assert found.group[N - 1:N + 4].tolist() == [3, 7, 3, N - 1, N - 1]  # the zero rows, -0.0 too, are one
    assert found.group[-1] == N


CASES = [("relu", True, False), ("relu", False, True), ("linear", True, False)]


@pytest.mark.parametrize("case", CASES, ids=["-".join(map(str, case)) for case in CASES])
@pytest.mark.parametrize("backend", ["admm", "cvxpy"])
def test_a_program_with_copies_has_the_oracles_optimum_on_the_program_as_given(case, backend):
    activation, per_neuron, cascade = case
    problem = with_copies(random_problem(1, N=24, P=120, M=5, activation=activation, per_neuron=per_neuron,
                                         cascade=cascade, g=0.2))
    oracle = solve_reference(problem)  # no merging: the program as given
    result = solve(problem, backend=backend)
    assert result.status == oracle.status == "optimal"
    assert result.info["input_copies"] == 4
    assert result.objective == pytest.approx(oracle.objective, rel=5e-3)
    assert problem.columns_within_budget(result.U, fit_rtol=1e-9, violation_tol=1e-5).all()
    assert not result.U[23:28].any()  # the copies after the first and the second zero row carry nothing
    if backend == "admm":
        assert np.sum(result.info["l1_lower_bound"]) <= oracle.objective * (1 + 1e-6)


def test_with_l1_weights_each_neurons_weight_sits_on_its_cheapest_copy(monkeypatch):
    monkeypatch.setattr(copies, "BLOCK_COLUMNS", 2)  # the neurons' columns grouped in blocks, as on wide layers
    problem = with_copies(random_problem(2, N=24, P=120, M=5, per_neuron=True, g=0.2))
    cost = np.random.default_rng(0).uniform(0.5, 1.5, problem.original_weights.shape)
    problem = dataclasses.replace(problem, l1_weights=cost)
    oracle = solve_reference(problem)
    result = solve(problem, reweight=1)  # the reweighted round's weights come from the merged program
    first = solve(problem)
    assert first.objective == pytest.approx(oracle.objective, rel=5e-3)
    assert result.status == "optimal"
    for rows in ([3, 23, 25], [7, 24]):
        for m in range(problem.shape[2]):
            nonzero = np.flatnonzero(first.U[rows, m])
            assert nonzero.size <= 1
            if nonzero.size:
                assert cost[rows[nonzero[0]], m] == cost[rows, m].min()


def test_the_rows_objective_merges_single_rows_and_keeps_groups_of_rows():
    problem = with_copies(random_problem(3, N=24, P=120, M=5, per_neuron=True, g=0.2), structure="rows")
    oracle = solve_reference(problem)
    result = solve(problem, gap_tol=1e-3)
    assert result.status == "optimal" and result.info["input_copies"] == 4
    assert result.objective == pytest.approx(oracle.objective, rel=5e-3)
    grouped = with_copies(random_problem(3, N=25, P=120, M=5, per_neuron=True, g=0.2), structure="rows",
                          group_size=2)
    assert "input_copies" not in solve(grouped).info


def test_every_block_of_neurons_iterates_with_the_merged_layers_constants(strict_device):
    problem = with_copies(random_problem(4, N=24, P=120, M=6, per_neuron=True, g=0.2))
    merged, _ = merge(problem, find_copies(problem.X))
    shared = block_options(problem, "admm", {})
    assert shared == iteration_constants(merged)
    whole = solve(problem, **shared)
    halves = [solve(problem.neurons(part), device=strict_device, **shared) for part in (slice(0, 3), slice(3, 6))]
    assert np.allclose(np.hstack([half.U for half in halves]), whole.U, atol=1e-8)
