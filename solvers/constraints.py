"""The layer program's constraint set on the device, C = {Z: ||(Z - Y)_Omega|| <= eps (per neuron, or in total
when coupled), Z_Omega^c <= V (relu)}: the user's program (`Program`, where the relu and coupled flags live), the
Z-step's projection onto the working set's internal C, and the measures and moves that keep the answer within the
user's C: exact measurement, tightening, and the way back to the user's budget. See admm.py's docstring."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .arrays import squared_norms


@dataclass
class Program:
    """The user's program on the device, for the neurons of this solve: Y (M, P) and omega in float64/bool,
    upper V (M, P) or the float 0.0, eps (M,) per neuron or the layer's float (coupled), l1 weights (N, M) or
    None (with rows=True, each group's weight repeated over its rows: the objective sum_g c_g ||U_g,:||, groups
    of group_size rows as in rowgroups.py); relu: Omega^c bounded by V (else Omega is every sample); coupled:
    one budget for the layer."""

    Y: object
    omega: object
    upper: object
    eps: object
    l1_weights: object
    relu: bool = True
    coupled: bool = False
    rows: bool = False
    group_size: int = 1

    def upper_of(self, xp, index):
        """V of the neurons `index` (a device integer array): their rows, or the float 0.0."""
        return self.upper if isinstance(self.upper, float) else xp.take(self.upper, index, axis=0)


def project(xp, A, s, program: Program):
    """Euclidean projection onto C = {Z: ||(Z - Y)_Omega|| <= eps (per row, or in total), Z_Omega^c <= V}:
    Y + t (A - Y) on Omega, t = min(1, eps / ||(A - Y)_Omega||), and min(A, V) on Omega^c; for a relu layer
    min(A, ceiling) - (1 - t) (A - Y)_Omega, the ceiling being V on Omega^c and +inf on Omega. Y, Omega, the
    internal eps and the ceiling are the working set's (s); the flags the program's."""
    relu = program.relu
    # Float masks multiply: a selection by a boolean mask as irregular as Omega (np.where) costs NumPy several
    # times more than the multiplication and the addition together.
    residual = (A - s.Y) * s.on_omega if relu else A - s.Y
    squares = squared_norms(xp, residual, axis=1)[:, None]
    norms = xp.sqrt(xp.sum(squares, keepdims=True) if program.coupled else squares)
    outside = norms > s.eps
    shrink = xp.where(outside, s.eps / xp.where(outside, norms, 1.0), 1.0)
    return xp.minimum(A, s.ceiling) - (1.0 - shrink) * residual if relu else s.Y + shrink * residual


def measure_candidates(be, s, positions: np.ndarray, X64, program: Program, unscale):
    """The candidates' sparse iterates measured exactly in float64: (weights (N, k), responses (k, P), excess
    (k,) of the response error sqrt(fit^2 + ||(U^T X - V)_+ on Omega^c||^2) over the user's budget (the layer's,
    repeated, when coupled), largest Omega^c violation (k,)). `positions` index the working set (host); `program`
    is the user's program on the device."""
    xp = be.xp
    index = be.asarray(positions)
    neurons = be.asarray(s.neurons[positions])
    weights = xp.astype(xp.take(s.W, index, axis=1) * unscale, xp.float64)
    response = X64.left_times(weights.T)
    Y, omega = xp.take(program.Y, neurons, axis=0), xp.take(program.omega, neurons, axis=0)
    fit2 = xp.sum(xp.where(omega, response - Y, 0.0) ** 2, axis=1)
    if program.relu:
        hinge = xp.where(omega, 0.0, xp.maximum(response - program.upper_of(xp, neurons), 0.0))
    else:
        hinge = xp.zeros_like(response)
    error2 = fit2 + xp.sum(hinge * hinge, axis=1)
    # Compared with the user's budget, not the tightened internal one.
    if program.coupled:
        excess = xp.zeros_like(error2) + xp.maximum(xp.sqrt(xp.sum(error2)) - program.eps, 0.0)
    else:
        excess = xp.maximum(xp.sqrt(error2) - xp.take(program.eps, neurons), 0.0)
    return weights, response, excess, xp.max(hinge, axis=1)


def tighten(be, s, retrying: np.ndarray, excess, violation, program: Program, rounds: int) -> None:
    """Tighten the internal budget of the working-set positions `retrying` (host) by twice their measured
    `excess` and, when they violate Omega^c, their whole Omega^c bound by twice their largest `violation`
    (shifting only the violated entries moves the violation elsewhere); from the third of the `rounds` allowed
    on, their stopping tolerances too (by 0.3; all the neurons' when they are coupled). excess and violation
    are (k,) host arrays for those positions."""
    xp, dt = be.xp, s.Y.dtype
    if program.coupled:
        s.eps = max(s.eps - 2 * float(excess[0]), 0.0)
    else:
        shrink = np.zeros(s.neurons.size)
        shrink[retrying] = 2 * excess
        s.eps = xp.maximum(s.eps - be.asarray(shrink[:, None], dt), 0.0)
    if program.relu and float(violation.max()) > 0:
        margin = np.zeros(s.neurons.size)
        margin[retrying] = 2 * violation
        s.ceiling = s.ceiling - be.asarray(margin[:, None], dt)  # +inf on Omega stays +inf
    s.rounds_left[retrying] -= 1
    s.tight[retrying] = True
    late = retrying[s.rounds_left[retrying] < rounds - 2]
    if late.size:
        factor = np.ones(s.neurons.size)
        factor[slice(None) if program.coupled else late] = 0.3
        s.tol_factor = s.tol_factor * be.asarray(factor, s.tol_factor.dtype)


def back_to_the_program(be, s, positions: np.ndarray, program: Program) -> None:
    """Give the tightened working-set `positions` (host; per-neuron budgets) the user's budget and Omega^c bound
    again. A tightened neuron converges to the tightened program's optimum, which lies above the user's (1% on a
    neuron of MNIST layer 1 whose whole Omega^c bound was lowered by twice a violation of 8e-3, where 0.5% is
    the gap tolerance); on the user's program it converges near the user's optimum, and what it then misses is
    repaired or tightened again (one restoration round fewer)."""
    xp = be.xp
    s.tight[positions] = False
    aim_at_the_budget(be, s, positions, program)
    if s.ceiling is not None:
        mask = np.zeros(s.neurons.size, dtype=bool)
        mask[positions] = True
        user = program.upper_of(xp, be.asarray(s.neurons))
        s.ceiling = xp.where(be.asarray(mask)[:, None], ceiling(xp, s.on_omega, user), s.ceiling)


def ceiling(xp, on_omega, upper):
    """The relu projection's bound on Z (iteration.project): V on Omega^c, +inf on Omega (where the fit, not V,
    holds Z); on_omega (k, P) is Omega as floats, upper V (k, P) or a float. In on_omega's dtype."""
    bound = xp.zeros_like(on_omega) + (upper if isinstance(upper, float) else xp.astype(upper, on_omega.dtype))
    return xp.where(on_omega > 0, xp.inf, bound)


def aim_at_the_budget(be, s, positions: np.ndarray, program: Program) -> None:
    """Give the working-set `positions` (host) the user's budget (the program's eps: (M,) on the device, or the
    layer's float) as their internal one, in place of the margin inside it."""
    s.inside_margin[positions] = False
    if program.coupled:
        s.eps = float(program.eps)
        return
    xp = be.xp
    mask = np.zeros(s.neurons.size, dtype=bool)
    mask[positions] = True
    user = xp.astype(xp.take(program.eps, be.asarray(s.neurons), axis=0), s.eps.dtype)[:, None]
    s.eps = xp.where(be.asarray(mask)[:, None], user, s.eps)
