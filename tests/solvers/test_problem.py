"""LayerProblem: validation at the boundary (each error names its argument) and the exact measures."""

import numpy as np
import pytest

from instances import random_problem
from solvers import LayerProblem, relative_budget, solve


def _data(N=6, P=10, M=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N, P))
    W = rng.standard_normal((N, M))
    return X, np.maximum(W.T @ X, 0), W


@pytest.mark.parametrize("change, match", [
    (lambda X, Y, W: dict(X=X[:, :5]), "same number of samples"),
    (lambda X, Y, W: dict(X=X[0]), "X must be a 2-D array"),
    (lambda X, Y, W: dict(X=np.where(X > 1, np.nan, X)), "X contains NaN or Inf"),
    (lambda X, Y, W: dict(Y=np.where(Y > 0.5, np.inf, Y)), "Y contains NaN or Inf"),
    (lambda X, Y, W: dict(X=X[:, :0], Y=Y[:, :0]), "no samples"),
    (lambda X, Y, W: dict(eps=-1.0), "eps must be a finite number >= 0"),
    (lambda X, Y, W: dict(eps=np.nan), "eps must be a finite number >= 0"),
    (lambda X, Y, W: dict(eps=np.ones(2)), r"eps must be a scalar or have one entry per neuron, shape \(3,\)"),
    (lambda X, Y, W: dict(eps=np.array([1.0, -1.0, 1.0])), "eps must be finite and >= 0"),
    (lambda X, Y, W: dict(activation="tanh"), "activation must be one of"),
    (lambda X, Y, W: dict(Y=Y - 1.0), "Y has negative entries"),
    (lambda X, Y, W: dict(upper=np.zeros((2, 10))), "upper must have Y's shape"),
    (lambda X, Y, W: dict(upper=np.full(Y.shape, np.nan)), "upper contains NaN or Inf"),
    (lambda X, Y, W: dict(upper=np.full(Y.shape, -10.0), original_weights=W), "upper: the original weights violate"),
    (lambda X, Y, W: dict(original_weights=W[:, :2]), r"original_weights must be \(N, M\)"),
    (lambda X, Y, W: dict(activation="linear", upper=np.zeros(Y.shape)), "upper .* only applies"),
])
def test_bad_input_is_refused_with_the_argument_named(change, match):
    X, Y, W = _data()
    arguments = dict(X=X, Y=Y, eps=0.1)
    arguments.update(change(X, Y, W))
    with pytest.raises(ValueError, match=match):
        LayerProblem(**arguments)


def test_inputs_are_not_modified():
    X, Y, W = _data()
    copies = [X.copy(), Y.copy(), W.copy()]
    problem = LayerProblem(X, Y, relative_budget(Y, 0.1, per_neuron=True), original_weights=W)
    solve(problem)
    for before, after in zip(copies, (X, Y, W), strict=True):
        np.testing.assert_array_equal(before, after)


def test_relative_budget_forms():
    _, Y, _ = _data()
    assert relative_budget(Y, 0.1) == pytest.approx(0.1 * np.linalg.norm(Y))
    per_neuron = relative_budget(Y, 0.1, per_neuron=True)
    np.testing.assert_allclose(per_neuron, 0.1 * np.linalg.norm(Y, axis=1))
    assert np.linalg.norm(per_neuron) == pytest.approx(relative_budget(Y, 0.1))
    with pytest.raises(ValueError, match="g must be"):
        relative_budget(Y, -0.1)


def test_measures_of_the_original_weights():
    problem = random_problem(3)
    measures = problem.evaluate(problem.original_weights)
    assert measures["fit"] == pytest.approx(0.0, abs=1e-10)
    assert measures["max_violation"] == 0.0
    assert measures["objective"] == pytest.approx(np.abs(problem.original_weights).sum())


def test_solve_refuses_unknown_backend_and_options():
    problem = random_problem(0)
    with pytest.raises(ValueError, match="backend must be one of"):
        solve(problem, backend="gurobi")
    with pytest.raises(ValueError, match="dtype must be"):
        solve(problem, dtype="float16")
    with pytest.raises(ValueError, match="device must be"):
        solve(problem, device="tpu")
    with pytest.raises(ValueError, match="relaxation must be"):
        solve(problem, relaxation=2.5)
    with pytest.raises(ValueError, match="solver must be one of"):
        solve(problem, backend="cvxpy", solver="ECOS")
    with pytest.raises(ValueError, match="problem must be a LayerProblem"):
        solve((1, 2, 3))
