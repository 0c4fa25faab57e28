"""The one-shot pruners users compare Net-Trim with, written from their papers for the benchmarks (not the library):
SparseGPT (Frantar and Alistarh 2023) and Wanda (Sun et al. 2023), on a layer in nettrim's form: U (N, M) with one
column per output unit and the bias as the last row, X (N, P) the layer's input samples with a row of ones (an
unfolded conv's patches are samples too, so Linear and Conv2d layers are the same case). Each prunes to exactly
`zeros` zero entries of U where ties allow, so the baselines run at Net-Trim's per-layer sparsity.
"""

from __future__ import annotations

import copy

import numpy as np
from torch import nn

from nettrim.layers import select_layers
from nettrim.signals import calibration_batches, capture


def even_split(total: int, parts: int) -> np.ndarray:
    """`total` split into `parts` integers that differ by at most one and sum to it (cumulative rounding)."""
    return np.diff(np.round(np.linspace(0, total, parts + 1)).astype(int))


def wanda(U: np.ndarray, X: np.ndarray, zeros: int) -> np.ndarray:
    """Wanda: score S_ij = |U_ij| ||X_i,:||_2 (weight times input norm); every output unit j drops its
    lowest-scored entries, the units sharing `zeros` evenly. No weight is updated."""
    scores = np.abs(U) * np.linalg.norm(X, axis=1)[:, None]
    ranks = np.argsort(np.argsort(scores, axis=0, kind="stable"), axis=0, kind="stable")
    return np.where(ranks < even_split(zeros, U.shape[1])[None, :], 0.0, U)


def sparsegpt(U: np.ndarray, X: np.ndarray, zeros: int, block: int = 128, damping: float = 0.01) -> np.ndarray:
    """SparseGPT: the optimal brain surgeon's update done column by column over the inputs.

    With H = X X^T + lambda I (lambda = damping * mean diag) and H^-1 = R^T R (R upper triangular), inputs are
    visited in order; pruning input i's weights w_i (a row of U, one entry per output unit) to q_i moves the
    later inputs' weights by -((w_i - q_i) / R_ii) R_i,k for k > i, the least-squares correction of the output
    error through the inputs not yet visited. Masks are chosen per block of `block` inputs at its start, by the
    score w^2 / R_ii^2 over the block's entries, the blocks sharing `zeros` in proportion to their size.
    Inputs that are always zero are pruned first (their weights change nothing).
    """
    W = np.array(U, dtype=np.float64)
    N = W.shape[0]
    H = X @ X.T
    dead = np.diag(H) == 0
    H[dead, dead] = 1.0
    H[np.diag_indices(N)] += damping * np.mean(np.diag(H))
    R = np.linalg.cholesky(np.linalg.inv(H)).T  # H^-1 = R^T R
    quota = even_split(zeros, N)
    for start in range(0, N, block):
        stop = min(start + block, N)
        scores = W[start:stop] ** 2 / np.diag(R)[start:stop, None] ** 2
        scores[dead[start:stop]] = -1.0
        pruned = np.zeros(scores.size, dtype=bool)
        pruned[np.argsort(scores, axis=None, kind="stable")[:quota[start:stop].sum()]] = True
        pruned = pruned.reshape(scores.shape)
        errors = np.empty((stop - start, W.shape[1]))
        for i in range(start, stop):
            kept = np.where(pruned[i - start], 0.0, W[i])
            errors[i - start] = (W[i] - kept) / R[i, i]
            W[i:stop] -= np.outer(R[i, i:stop], errors[i - start])
            W[i] = kept
        W[stop:] -= R[start:stop, stop:].T @ errors
    return W


def pruned_sequentially(model: nn.Module, calibration, nonzeros: dict[str, int], prune_layer,
                        max_samples: int | None, seed: int = 0) -> nn.Module:
    """A copy of `model` whose named layers are pruned by prune_layer(U, X, zeros) to `nonzeros` nonzero entries
    each, in execution order, each on its input from the copy with the earlier layers already pruned (as both
    papers do)."""
    pruned = copy.deepcopy(model)
    layers = select_layers(pruned, list(nonzeros))
    batches = calibration_batches(calibration)
    positions = {layer.name: index for index, layer in enumerate(layers)}
    by_name = {layer.name: layer for layer in layers}
    for name in capture(pruned, batches[:1], layers, positions, 1, seed):  # the execution order
        layer = by_name[name]
        X = capture(pruned, batches, [layer], positions, max_samples, seed, False)[name]
        U = layer.weight_matrix()
        layer.set_weight_matrix(prune_layer(U, X, U.size - nonzeros[name]))
    return pruned
