"""The neurons the ADMM leaves "inaccurate" are finished by interior point (solvers/crossover.py), and a dead
neuron with a tiny optimum is proven by the absolute gap tolerance (admm.ABSOLUTE_GAP)."""

import dataclasses

import numpy as np
import pytest

import nettrim
from instances import random_problem
from networks import inputs, mlp
from solvers import LayerProblem, crossover, solve
from solvers.admm import ABSOLUTE_GAP
from solvers.crossover import finish_inaccurate, pulled_inside
from solvers.problem import column_l1


def _marked_inaccurate(problem: LayerProblem, neurons: list[int]):
    """The ADMM's result with `neurons` given their original (feasible, denser) weights and marked inaccurate,
    as the ADMM leaves a neuron whose l1 it could not prove."""
    result = solve(problem)
    assert result.status == "optimal"
    result.U[:, neurons] = problem.original_weights[:, neurons]
    result.info["neuron_statuses"][neurons] = "inaccurate"
    result.info["neuron_status"].update(optimal=problem.shape[2] - len(neurons), inaccurate=len(neurons))
    return result


def test_inaccurate_neurons_take_the_references_optimum_and_the_others_stay():
    problem = random_problem(5, N=20, P=200, M=6, per_neuron=True, g=0.1, cascade=True)
    result = _marked_inaccurate(problem, [1, 4])
    finished = finish_inaccurate(problem, result)
    reference = solve(problem.neurons([1, 4]), backend="cvxpy")
    assert finished.status == "optimal" and finished.info["crossover"] == 2
    assert "2 neurons finished by interior point" in finished.message
    assert list(finished.info["neuron_statuses"]) == ["optimal"] * 6
    np.testing.assert_allclose(column_l1(finished.U[:, [1, 4]]), column_l1(reference.U), rtol=1e-6)
    assert problem.columns_within_budget(finished.U, 0.0, 1e-5).all()
    untouched = [0, 2, 3, 5]
    np.testing.assert_array_equal(finished.U[:, untouched], result.U[:, untouched])
    assert result.info["neuron_statuses"][1] == "inaccurate"  # the ADMM's result is not modified


def test_the_admms_weights_stay_when_they_keep_the_budget_at_no_more_l1_and_misses_are_replaced():
    problem = random_problem(6, N=20, P=200, M=4, per_neuron=True, g=0.1)
    result = solve(problem)
    result.info["neuron_statuses"][[1, 2]] = "inaccurate"
    result.info["neuron_status"].update(optimal=2, inaccurate=2)
    result.U[:, 1] *= 1 - 1e-2  # below the optimum's l1, so outside the budget
    finished = finish_inaccurate(problem, result)
    reference = solve(problem.neurons([1, 2]), backend="cvxpy")
    assert finished.status == "optimal" and finished.info["crossover"] == 2
    assert column_l1(finished.U[:, [1]])[0] == pytest.approx(column_l1(reference.U[:, [0]])[0], rel=1e-6)
    cheaper = min(column_l1(result.U[:, [2]])[0], column_l1(reference.U[:, [1]])[0])
    assert column_l1(finished.U[:, [2]])[0] == cheaper
    assert problem.columns_within_budget(finished.U, 0.0, 1e-5).all()


def test_an_answer_over_the_budget_is_pulled_exactly_inside_toward_the_original_weights():
    """Beyond the reference's optimum on the line from the original weights W0 the fit exceeds eps (it is convex
    and below eps at W0); the pull puts every column back within eps exactly, at a negligible cost in l1."""
    problem = random_problem(8, N=20, P=200, M=5, per_neuron=True, g=0.1, cascade=True)
    optimum = solve(problem, backend="cvxpy").U
    over = optimum + 1e-6 * (optimum - problem.original_weights)
    assert not problem.columns_within_budget(over, 0.0, 1e-5).any()
    pulled = pulled_inside(problem, over)
    assert problem.columns_within_budget(pulled, 0.0, 1e-5).all()
    np.testing.assert_allclose(column_l1(pulled), column_l1(optimum), rtol=1e-5)


def test_a_linear_program_is_finished_on_its_sufficient_statistics(monkeypatch):
    """A linear program with many more samples than inputs goes to the reference over k <= N samples
    (sufficient.py), with the optimum of the program on all P samples, measured on them."""
    exact = random_problem(9, N=20, P=2_000, M=4, activation="linear", per_neuron=True, g=0.1)
    noise = 0.3 * np.random.default_rng(9).standard_normal(exact.Y.shape)  # a part no weights reach
    eps = np.sqrt(np.sum(noise**2, axis=1) + exact.eps**2)
    problem = dataclasses.replace(exact, Y=exact.Y + noise, eps=eps)
    result = _marked_inaccurate(problem, [0, 3])
    samples = []
    reference = crossover.solve_reference

    def counted(program, **options):
        samples.append(program.shape[1])
        return reference(program, **options)

    monkeypatch.setattr(crossover, "solve_reference", counted)
    finished = finish_inaccurate(problem, result)
    assert samples == [20] and finished.info["crossover"] == 2
    on_every_sample = reference(problem.neurons([0, 3]))
    np.testing.assert_allclose(column_l1(finished.U[:, [0, 3]]), column_l1(on_every_sample.U), rtol=1e-6)
    assert problem.columns_within_budget(finished.U, 0.0, 0.0).all()


def test_suboptimal_neurons_are_finished_only_while_the_reference_is_cheap(monkeypatch):
    """A "suboptimal" neuron (within budget, proven only within the widened gap) is finished like an inaccurate
    one while it and its like make at most SUBOPTIMAL_ENTRIES entries for the reference; beyond, it stays."""
    problem = random_problem(5, N=20, P=200, M=6, per_neuron=True, g=0.1, cascade=True)
    result = solve(problem)
    result.info["neuron_statuses"][[1, 4]] = "suboptimal"
    result.info["neuron_status"].update(optimal=4, suboptimal=2)
    finished = finish_inaccurate(problem, result)
    assert finished.info["crossover"] == 2 and list(finished.info["neuron_statuses"]) == ["optimal"] * 6
    monkeypatch.setattr(crossover, "SUBOPTIMAL_ENTRIES", 2 * 20 * 200 - 1)
    assert finish_inaccurate(problem, result) is result


def test_a_crossover_beyond_max_entries_leaves_the_result_as_it_is():
    problem = random_problem(6, N=20, P=200, M=4, per_neuron=True, g=0.1)
    large = _marked_inaccurate(problem, [0])
    assert finish_inaccurate(problem, large, max_entries=20 * 200 - 1) is large


def test_a_layer_budget_is_finished_whole():
    problem = random_problem(7, N=16, P=120, M=4, per_neuron=False, g=0.1)
    result = solve(problem)
    result.U = problem.original_weights.copy()
    result.info["neuron_statuses"][:] = "inaccurate"
    result.info["neuron_status"].update(optimal=0, inaccurate=4)
    finished = finish_inaccurate(problem, result)
    reference = solve(problem, backend="cvxpy")
    assert finished.status == "optimal" and finished.info["crossover"] == 4
    assert finished.objective == pytest.approx(reference.objective, rel=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_a_dead_neuron_whose_optimum_is_tiny_ends_optimal_within_the_absolute_gap(seed):
    """Features of norm 1e-8 beside the bias row; neuron 0 is dead (Y = 0, Omega empty) with V = -1e-8 to -7e-8,
    so its optimum is the bias alone at min V (the dual lam = e_j at V's smallest sample proves it), 1e-7 against
    the other neurons' l1 of about 1: no relative gap is provable from a bound near 0."""
    rng = np.random.default_rng(seed)
    N, P, M = 40, 8, 4
    X = np.vstack([1e-8 * rng.random((N - 1, P)), np.ones((1, P))])
    W = rng.standard_normal((N, M)) / 8
    W[-1] = 0.0
    W[-1, 0] = -2e-7  # neuron 0 is dead, its trained weights far from the optimum
    V = W.T @ X
    V[0] = np.maximum(V[0], -rng.uniform(1e-8, 7e-8, P))
    Y = np.maximum(V, 0.0)
    Y[0] = 0.0
    eps = 0.1 * np.linalg.norm(Y, axis=1)
    problem = LayerProblem(X, Y, eps, "relu", upper=V, original_weights=W)
    result = solve(problem)
    assert result.info["neuron_statuses"][0] == "optimal", result.message
    assert problem.columns_within_budget(result.U, 1e-9, 1e-5).all()
    typical = np.median(column_l1(W))
    assert column_l1(W[:, :1])[0] > 1e6 * -V[0].min()
    assert column_l1(result.U[:, :1])[0] <= -V[0].min() + ABSOLUTE_GAP * typical


def test_a_trim_finishes_the_neurons_its_admm_cannot_prove():
    """gap_tol = 0 leaves every neuron that the absolute gap does not prove "inaccurate" in the ADMM; the trim
    finishes them by interior point, so every layer ends optimal within its budget."""
    model, x = mlp(), inputs(200)
    _, report = nettrim.trim(model, x, progress=False, solver_options={"gap_tol": 0.0, "gap_patience": 1})
    assert all(row.status == "optimal" for row in report.layers), str(report)
    assert any("finished by interior point" in row.message for row in report.layers)
    for row in report.layers:
        assert row.fit_ratio <= 1 + 1e-9 and row.violation <= 1e-5
