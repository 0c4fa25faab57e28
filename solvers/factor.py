"""The layer input X, equilibrated and factored once per layer: what every neuron chunk of the ADMM shares.

The ADMM's U-step solves (Xs Xs^T + beta I) U = R for the N x M right-hand side R (Xs = D^-1 X, the rows of X
scaled to unit norm). It is factored from whichever Gram matrix is smaller:

- features (N x N): (Xs Xs^T + beta I)^-1 from one eigendecomposition, U = inverse R;
- samples (P x P, when P < N): by the Woodbury identity
      (Xs Xs^T + beta I)^-1 = (I - Xs (Xs^T Xs + beta I)^-1 Xs^T) / beta,
  U = (R - Xs K^-1 (Xs^T R)) / beta with K = Xs^T Xs + beta I: a P x P factorization and two more products with
  Xs a step instead of an N x N one, so a layer with more inputs than samples (VGG's classifier, 3x3 convs over
  many channels, transformer down-projections) never forms an N x N matrix.

"auto" takes the samples side when it costs fewer operations a step (2 N P + P^2 < N^2, about P < 0.41 N) and X
is on the device whole; a streamed X (samples.py) is factored on the features side. Both sides have the same
nonzero eigenvalues, so ||Xs||_2 comes from either.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import rowgroups
from .samples import SampleBlocks

SIDES = ("auto", "features", "samples")


def factored_side(N: int, P: int, side: str = "auto", streamed: bool = False) -> str:
    """"features" or "samples": the Gram matrix the U-step factors (module docstring)."""
    if side not in SIDES:
        raise ValueError(f"u_step must be one of {SIDES}, got {side!r}")
    if streamed:
        return "features"
    if side == "auto":
        return "samples" if 2 * N * P + P * P < N * N else "features"
    return side


@dataclass
class LayerInput:
    """X on the device (or streamed to it), equilibrated, and its U-step factored."""

    X64: SampleBlocks  # X, float64
    X: SampleBlocks    # Xs = D^-1 X in the working precision
    inverse: object    # (Xs Xs^T + beta I)^-1 (features side) or (Xs^T Xs + beta I)^-1 (samples side)
    side: str          # "features" or "samples"
    beta: float
    scale: object      # D, the row norms of X (ones without equilibration), float64
    unscale: object    # 1 / D as an (N, 1) column in the working precision
    x_norm: float      # ||Xs||_2
    widest: tuple      # (k, xs_k (1 x P), Xs xs_k^T (N x 1)) for the row k of largest norm (certificates.dual_bound)

    @classmethod
    def prepare(cls, be, X: np.ndarray, dt: np.dtype, equilibrate: bool, beta: float,
                samples_per_block: int | None = None, side: str = "auto", group_size: int = 1) -> LayerInput:
        """On the device whole, or (samples_per_block given) on the host in blocks moved at each product.
        group_size > 1 (the rows' objective) scales the rows of each group alike (rowgroups.py)."""
        xp = be.xp
        side = factored_side(*X.shape, side, streamed=samples_per_block is not None)
        host_scale = (rowgroups.equilibration_scale(np.linalg.norm(X, axis=1), group_size) if equilibrate
                      else np.ones(X.shape[0]))
        scale = be.asarray(host_scale)
        if samples_per_block is None:
            X64 = be.asarray(X)
            Xs64 = X64 / scale[:, None]
            gram64 = Xs64.T @ Xs64 if side == "samples" else Xs64 @ Xs64.T
            X64, Xs = SampleBlocks.on_device(be, X64), SampleBlocks.on_device(be, xp.astype(Xs64, be.dtype(dt)))
            del Xs64  # freed before the factorization, whose peak memory_sizes counts
        else:
            X64 = SampleBlocks.on_host(be, X, samples_per_block)
            Xs = SampleBlocks.on_host(be, X, samples_per_block, lambda block: (block / host_scale[:, None]).astype(dt))
            gram64 = X64.gram() / (scale[:, None] * scale[None, :])
        eigenvalues, eigenvectors = xp.linalg.eigh(gram64)
        del gram64
        eigenvalues = xp.maximum(eigenvalues, 0.0)
        inverse = xp.astype((eigenvectors / (eigenvalues + beta)) @ eigenvectors.T, be.dtype(dt))
        x_norm = math.sqrt(be.scalars(xp.max(eigenvalues))[0])
        return cls(X64, Xs, inverse, side, float(beta), scale, xp.astype(1.0 / scale, be.dtype(dt))[:, None],
                   x_norm, cls._widest_row(be, X, host_scale, Xs))

    @staticmethod
    def _widest_row(be, X: np.ndarray, host_scale: np.ndarray, Xs: SampleBlocks) -> tuple:
        """(k, xs_k, Xs xs_k^T) for the row k of X of largest norm, xs_k (1 x P) its row of Xs (device, working
        precision)."""
        k = int(np.argmax(np.linalg.norm(X, axis=1)))
        row = be.xp.astype(be.asarray((X[k] / host_scale[k])[None, :]), Xs.device_dtype)
        return k, row, Xs.times_transposed(row)[0]

    def step_u(self, C, B):
        """(U, U^T Xs) for U = (Xs Xs^T + beta I)^-1 (Xs C^T + beta B), C (M x P), B (N x M), on the samples side
        with two products with Xs instead of four. With K = Xs^T Xs + beta I, the push-through identity
        (Xs Xs^T + beta I)^-1 Xs = Xs K^-1 and Woodbury give U = B + Xs E, E = K^-1 (C^T - Xs^T B), and since
        K^-1 Xs^T Xs = I - beta K^-1, U^T Xs = C - beta E^T: the response costs no product at all."""
        Xs = self.X.resident
        E = self.inverse @ (C.T - Xs.T @ B)
        return B + Xs @ E, C - self.beta * E.T

    def solve_u(self, rhs):
        """U = (Xs Xs^T + beta I)^-1 rhs for the N x M right-hand side (module docstring)."""
        if self.side == "features":
            return self.inverse @ rhs
        Xs = self.X.resident
        return (rhs - Xs @ (self.inverse @ (Xs.T @ rhs))) / self.beta
