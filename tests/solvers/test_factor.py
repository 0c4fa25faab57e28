"""The U-step from either Gram matrix (solvers/factor.py): the Woodbury form on the P x P one equals the N x N
solve, the ADMM with it reaches the oracle's optimum, and a layer with many more inputs than samples never forms
an N x N matrix."""

import tracemalloc

import numpy as np
import pytest

from instances import random_problem
from solvers import LayerProblem, relative_budget, solve
from solvers.arrays import backend
from solvers.factor import LayerInput, factored_side


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize(("N", "P"), [(60, 20), (20, 60)])
def test_the_u_step_is_the_same_from_either_gram_matrix(N, P, dtype):
    rng = np.random.default_rng(N + P)
    X = rng.standard_normal((N, P)) * rng.uniform(0.1, 10, (N, 1))
    rhs = rng.standard_normal((N, 5))
    be, beta = backend("cpu"), 0.7
    features = LayerInput.prepare(be, X, np.dtype(dtype), True, beta, side="features")
    samples = LayerInput.prepare(be, X, np.dtype(dtype), True, beta, side="samples")
    assert (features.side, samples.side) == ("features", "samples")
    Xs = X / np.linalg.norm(X, axis=1, keepdims=True)
    exact = np.linalg.solve(Xs @ Xs.T + beta * np.eye(N), rhs)
    rounding = 1e-10 if dtype == "float64" else 1e-4
    for layer in (features, samples):
        np.testing.assert_allclose(layer.solve_u(rhs.astype(dtype)), exact, rtol=0, atol=rounding * np.abs(exact).max())
    assert samples.x_norm == pytest.approx(features.x_norm, rel=1e-12)


def test_the_side_is_the_one_with_fewer_operations():
    assert factored_side(1000, 100) == "samples" and factored_side(1000, 500) == "features"
    assert factored_side(1000, 100, streamed=True) == "features"
    assert factored_side(1000, 900, "samples") == "samples"
    with pytest.raises(ValueError, match="u_step must be one of"):
        factored_side(10, 5, "woodbury")


@pytest.mark.parametrize("activation", ["relu", "linear"])
@pytest.mark.parametrize("per_neuron", [True, False])
def test_the_admm_on_the_samples_side_matches_clarabel(activation, per_neuron):
    problem = random_problem(61, N=60, P=25, M=4, activation=activation, per_neuron=per_neuron, g=0.05,
                             cascade=activation == "relu")
    reference = solve(problem, backend="cvxpy", solver="CLARABEL")
    for dtype in ("float64", "float32"):
        result = solve(problem, u_step="samples", dtype=dtype)
        assert result.status == "optimal", result.message
        assert result.objective == pytest.approx(reference.objective, rel=5e-3)
        assert problem.columns_within_budget(result.U, 1e-9, 1e-5).all()


def test_a_layer_with_far_more_inputs_than_samples_solves_in_little_memory():
    """N = 20,000 inputs, P = 500 samples: the N x N Gram matrix alone would take 3.2 GB in float64 (three of them
    9.6 GB); on the samples side the whole solve stays within 2 GB."""
    rng = np.random.default_rng(7)
    N, P, M = 20_000, 500, 2
    X = np.vstack([rng.standard_normal((N - 1, P)), np.ones((1, P))])
    W = rng.standard_normal((N, M)) * (rng.random((N, M)) < 0.002)
    Y = np.maximum(W.T @ X, 0)
    problem = LayerProblem(X, Y, relative_budget(Y, 0.1, per_neuron=True), original_weights=W)
    tracemalloc.start()
    try:
        result = solve(problem, dtype="float32")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 * 2**30, f"{peak / 2**30:.2f} GiB"
    assert result.status == "optimal", result.message
    assert problem.columns_within_budget(result.U, 1e-9, 1e-5).all()
    assert result.objective <= np.abs(W).sum()  # the trained weights are feasible
    assert result.certified_gap <= 5e-3 * max(1.0, result.iterations / 500)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_the_fused_samples_side_step_gives_u_and_its_response(dtype):
    """step_u's U equals the U-step's, and its U^T Xs (from no product) equals the product, to rounding."""
    rng = np.random.default_rng(5)
    N, P, M = 80, 20, 6
    X = rng.standard_normal((N, P)) * rng.uniform(0.1, 10, (N, 1))
    C, B = rng.standard_normal((M, P)), rng.standard_normal((N, M))
    layer = LayerInput.prepare(backend("cpu"), X, np.dtype(dtype), True, 0.7, side="samples")
    Xs = X / np.linalg.norm(X, axis=1, keepdims=True)
    exact = np.linalg.solve(Xs @ Xs.T + 0.7 * np.eye(N), Xs @ C.T + 0.7 * B)
    U, response = layer.step_u(C.astype(dtype), B.astype(dtype))
    rounding = 1e-10 if dtype == "float64" else 1e-4
    np.testing.assert_allclose(U, exact, rtol=0, atol=rounding * np.abs(exact).max())
    np.testing.assert_allclose(response, exact.T @ Xs, rtol=0, atol=rounding * np.abs(exact.T @ Xs).max())
