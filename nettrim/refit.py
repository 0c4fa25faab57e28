"""Refit: least squares on the weights a trim kept (the relaxed lasso's debiasing), outside the convex program.

The l1 (or rows') objective shrinks the weights it keeps toward zero, as the lasso does. Once the trim has chosen
the zeros, the kept weights can follow the original layer more closely. With refit=True, once every layer is
trimmed, each layer in execution order is fitted again on the inputs Xhat that the layers before it (already
fitted again) produce. Neuron m's weights on its support S_m (its nonzero rows, the bias row included) become

    u_m = argmin_{u : u_i = 0 for i not in S_m}  ||u^T Xhat - z_m||_2,     z_m = w_m^T X   (the original
                                                                                      pre-activation)

on the calibration samples. The target is the pre-activation, not the relu output, so the samples where the
original neuron is off (z_m < 0) pull the fitted response below zero too. The solve uses the normal equations
(Xhat_S Xhat_S^T) u = Xhat_S z_m by Cholesky, plus a ridge of RIDGE times their mean diagonal so that inputs that
never vary (pixels that are 0 on every image) leave it solvable. Neurons with the same support share one
factorization, so a neuron-trimmed layer (one support for the layer) costs one.

A neuron keeps its fitted weights only when they bring its output act(u^T Xhat) closer to the original output
y_m than its trimmed weights do on the same inputs, so no neuron's output error grows. The zeros never move:
the sparsity, the removed neurons and the smaller model's shapes are the trim's. The fitted weights leave the
program, though: they need not keep its Omega^c constraints, so a layer's budget (Proposition 1) is no longer
what bounds it. The report gives instead each layer's measured output error ||act(U^T Xhat) - Y||_F / ||Y||_F
on the calibration data, with the trimmed weights and with the fitted ones.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
from tqdm import tqdm

from .layers import Layer

#: The ridge of the normal equations, relative to their mean diagonal.
RIDGE = 1e-9


def least_squares_on_supports(X: np.ndarray, Z: np.ndarray, supports: np.ndarray) -> np.ndarray:
    """U (N, M): column m minimizes ||u^T X - Z[m]|| over the u that are zero off supports[:, m] (module docstring).
    X (N, P), Z (M, P), supports (N, M) bools."""
    gram, moments = X @ X.T, X @ Z.T
    gram[np.diag_indices_from(gram)] += RIDGE * max(float(np.trace(gram)) / len(gram), 1e-300)
    U = np.zeros(supports.shape)
    patterns, which = np.unique(supports.T, axis=0, return_inverse=True)
    for index, pattern in enumerate(patterns):
        columns, rows = np.flatnonzero(which.ravel() == index), np.flatnonzero(pattern)
        if rows.size:
            factor = scipy.linalg.cho_factor(gram[np.ix_(rows, rows)])
            U[np.ix_(rows, columns)] = scipy.linalg.cho_solve(factor, moments[np.ix_(rows, columns)])
    return U


def output_errors(layer: Layer, U: np.ndarray, X: np.ndarray, Y: np.ndarray, relu: bool) -> np.ndarray:
    """(M,) ||act(u_m^T X) - y_m|| of each neuron."""
    response = layer.response(U, X)
    return np.linalg.norm((np.maximum(response, 0.0) if relu else response) - Y, axis=1)


def refit_layer(layer: Layer, X_original: np.ndarray, W_original: np.ndarray, X_trimmed: np.ndarray,
                relu: bool) -> tuple[float, float]:
    """Fit `layer`'s kept weights again (module docstring) and set them; returns its relative output errors
    (trimmed weights, fitted weights) on the inputs X_trimmed."""
    Z = layer.response(W_original, X_original)
    Y = np.maximum(Z, 0.0) if relu else Z
    U = layer.weight_matrix()
    fitted = np.zeros_like(U)
    for columns, X_group in zip(layer.group_columns(), layer.group_inputs(X_trimmed), strict=True):
        fitted[:, columns] = least_squares_on_supports(X_group, Z[columns], U[:, columns] != 0)  # a group's rows
    before, after = (output_errors(layer, weights, X_trimmed, Y, relu) for weights in (U, fitted))
    better = after < before
    chosen = np.where(better[None, :], fitted, U)
    layer.set_weight_matrix(chosen)
    scale = max(float(np.linalg.norm(Y)), 1e-300)
    return float(np.linalg.norm(before)) / scale, float(np.linalg.norm(np.where(better, after, before))) / scale


def refit_layers(order: list[Layer], relu: set[str], original_inputs: dict[str, np.ndarray],
                 original_weights: dict[str, np.ndarray], trimmed_input, progress: bool) -> dict[str, list[float]]:
    """refit_layer for each layer of `order` in turn, on the inputs trimmed_input(layer) of the model as fitted so
    far; {layer name: [relative output error trimmed, fitted]}."""
    errors = {}
    for layer in tqdm(order, desc="refit", unit="layer", disable=not progress, leave=False):
        errors[layer.name] = list(refit_layer(layer, original_inputs[layer.name], original_weights[layer.name],
                                              trimmed_input(layer), layer.name in relu))
    return errors
