"""Restore one neuron's budget on the support its sparse iterate found (the "polish" of NETTRIM.md section 4).

Near the optimum the ADMM's sparse iterate w (support S) has an l1 within a fraction of a percent of the optimum,
but it still exceeds the Omega^c bound by about 1e-3 max|Y| on a few dozen samples, and that last part of the
way takes the iteration most of its time. A correction d on S makes the violated samples A of Omega^c hold with a
margin tau and keeps the fit within the budget:

    x_p^T (w + d) = v_p - tau  (p in A),   ||r + X_{S,Omega}^T d|| <= target,   r = (X^T w - y)_Omega.

It is found in two parts. d0 = B (B^T B)^{-1} (v_A - tau - X_A^T w), B = X_{S,A}, is the smallest correction that
meets the equalities. If the fit of w + d0 is over the target, conjugate gradients minimize the fit over
corrections e with B^T e = 0 (the equalities stay met), starting from e = 0 and stopping at the first point of
their path that meets the target: the CG iterates of a least-squares problem grow in norm monotonically
(Steihaug 1983), so that point is a small correction too. Each CG step costs two products with X_{S,Omega}.
Correcting A can push other samples over their bound: they join A and the correction is repeated.

Only the correction's effect d^T X is computed here, in X's precision; the response of w is given exactly (the
caller measured it in float64), so the float32 data of a float32 solve leave an error of about 1e-7 of the
correction's effect, far below tau.
"""

from __future__ import annotations

import numpy as np


def repair_on_support(xp, X, response, y, omega, upper, w, target: float, tau: float, row_scale=None,
                      rounds: int = 4):
    """Weights w' with the support of w, x_p^T w' <= v_p - tau on Omega^c and fit <= target, or None.

    X (N, P), float32 or float64: the layer's input, or its rows divided by row_scale (the ADMM's equilibrated
    data; the corrections are then smallest in those coordinates), an array or samples.SampleBlocks (only the
    support's rows X[support] are read); w (N,) float64 and its response w^T X measured
    in float64 are in the layer's coordinates, as are the weights returned; y, omega, upper:
    the neuron's rows (upper a row or the scalar 0); target: the fit to reach on Omega; tau: the margin below the
    bound. None when no correction on the support meets both (as many violated samples as weights, or a fit
    out of reach).
    """
    support = xp.flatnonzero(w)
    if support.size == 0:
        return None
    X_support = X[support]
    X_omega = X_support[:, omega]
    outside = ~omega
    violated = xp.zeros(omega.shape, dtype=bool)
    weights = w[support].astype(np.float64)
    unscale = 1.0 if row_scale is None else 1.0 / row_scale[support]
    response = response.astype(np.float64)
    for _ in range(rounds):
        new = outside & ~violated & (response > upper - tau / 2)  # the corrected ones sit at upper - tau
        residual = response[omega] - y[omega]
        if not bool(new.any()) and float(xp.linalg.norm(residual)) <= target:
            break
        violated |= new
        if int(violated.sum()) >= support.size:
            return None
        basis, correction = _smallest_correction(xp, X_support[:, violated], (
            upper[violated] if np.ndim(upper) else upper) - tau - response[violated])
        if basis is None:
            return None
        residual = residual + _response_of(correction, X_omega)
        if float(xp.linalg.norm(residual)) > target:
            step = _within_target(xp, X_omega, residual, basis, (1 - 1e-6) * target)  # a hair inside: rounding
            if step is None:
                return None
            correction = correction + step
        weights = weights + correction * unscale
        response = response + _response_of(correction, X_support)
    if bool((outside & (response > upper)).any()) or float(xp.linalg.norm(response[omega] - y[omega])) > target:
        return None
    repaired = xp.zeros(w.shape, dtype=np.float64)
    repaired[support] = weights
    return repaired


def _smallest_correction(xp, B, shift):
    """An orthonormal basis of span(B) and the least-norm d with B^T d = shift; (None, None) when B's columns
    (the violated samples on the support) are dependent."""
    if B.shape[1] == 0:
        return xp.zeros((B.shape[0], 0)), xp.zeros(B.shape[0])
    basis, triangle = xp.linalg.qr(B.astype(np.float64))
    diagonal = xp.abs(xp.diagonal(triangle))
    if not float(diagonal.min()) > 1e-10 * float(diagonal.max()):
        return None, None
    return basis, basis @ xp.linalg.solve(triangle.T, shift)


def _response_of(d, X):
    """d^T X in float64, with the product in X's precision (X is not cast: it is the large operand)."""
    return (d.astype(X.dtype) @ X).astype(np.float64)


def _gradient_of(X, r):
    """X r in float64, with the product in X's precision."""
    return (X @ r.astype(X.dtype)).astype(np.float64)


def _within_target(xp, X_omega, residual, basis, target, max_steps: int = 100):
    """The first point e on the CG path of min ||residual + X_omega^T e|| over e orthogonal to `basis` whose fit is
    <= target, or None when the path ends (or max_steps pass) above it."""

    def projected(v):  # onto the complement of span(basis): the equalities B^T e = 0
        return v - basis @ (basis.T @ v)

    e = xp.zeros(X_omega.shape[0])
    gradient = projected(_gradient_of(X_omega, residual))
    direction = -gradient
    squared_target = target * target
    for _ in range(max_steps):
        change = _response_of(direction, X_omega)
        curvature = float(change @ change)
        if not curvature > 0:
            return None
        longest = -float(gradient @ direction) / curvature  # the step to the minimum along `direction`
        # ||residual + a change||^2 = target^2 at the smallest a > 0, when it is reached before `longest`
        b, c = float(residual @ change), float(residual @ residual) - squared_target
        discriminant = b * b - curvature * c
        reach = (-b - np.sqrt(discriminant)) / curvature if discriminant >= 0 else np.inf
        if reach <= longest:
            return e + max(reach, 0.0) * direction
        e = e + longest * direction
        residual = residual + longest * change
        previous = float(gradient @ gradient)
        gradient = projected(_gradient_of(X_omega, residual))
        direction = -gradient + float(gradient @ gradient) / previous * direction
    return None
