"""Random Net-Trim layer programs with a known feasible point (the generating weights)."""

from __future__ import annotations

import numpy as np

from solvers import LayerProblem, relative_budget


def random_problem(seed: int, *, N: int = 24, P: int = 120, M: int = 5, activation: str = "relu",
                   per_neuron: bool = False, g: float = 0.1, dead_neurons: int = 0, cascade: bool = False,
                   density: float = 0.4) -> LayerProblem:
    """X: N-1 Gaussian features plus a bias row of ones; W: sparse Gaussian weights (N x M).

    dead_neurons: that many neurons get weights whose response is negative on every sample (Y row = 0).
    cascade: X is a perturbed signal Xhat, Y the response to the unperturbed one, V = W^T Xhat, and the
    budget eps^2 = 1.1 ||(W^T Xhat - Y)_Omega||^2 + (g ||Y||)^2, so W stays feasible (the cascade rule of
    Aghasi et al., NIPS 2017, with gamma = 1.1).
    """
    rng = np.random.default_rng(seed)
    X = np.vstack([rng.standard_normal((N - 1, P)), np.ones((1, P))])
    W = rng.standard_normal((N, M)) * (rng.random((N, M)) < density)
    W[-1] += 0.2  # bias: about half of the samples active
    for m in range(dead_neurons):
        W[:, m] = 0.0
        W[-1, m] = -1.0
    response = W.T @ X
    Y = np.maximum(response, 0) if activation == "relu" else response
    if not cascade:
        eps = relative_budget(Y, g, per_neuron=per_neuron)
        return LayerProblem(X, Y, eps, activation, original_weights=W)
    Xhat = X + 0.05 * rng.standard_normal(X.shape) * (np.arange(N) < N - 1)[:, None]
    upper = W.T @ Xhat
    omega = Y > 0
    gap = np.where(omega, upper - Y, 0.0)
    if per_neuron:
        eps = np.sqrt(1.1 * (gap**2).sum(axis=1) + (g * np.linalg.norm(Y, axis=1)) ** 2)
    else:
        eps = float(np.sqrt(1.1 * (gap**2).sum() + (g * np.linalg.norm(Y)) ** 2))
    return LayerProblem(Xhat, Y, eps, activation, upper=upper, original_weights=W)
