"""Certificates of the ADMM's iterates (Boyd et al. 2011; Banjac et al. 2019): lower bounds on each neuron's optimal
objective from its duals (weak duality), Farkas certificates that a budget is infeasible, and the one rule that
decides "proven within the gap". See admm.py's docstring for where they sit in the iteration."""

from __future__ import annotations

from . import rowgroups
from .arrays import squared_norms


def within_gap(objective, bound, gap_allowed: float, absolute_gap: float):
    """Is the objective proven near its optimum: objective - bound <= gap_allowed objective + absolute_gap, for a
    certified lower bound `bound` (arrays of any namespace, or floats)? The one rule every acceptance uses."""
    return objective - bound <= gap_allowed * objective + absolute_gap


def per_budget(xp, values, coupled: bool):
    """Per-neuron values, or (coupled: one budget for the layer) their total repeated for every neuron."""
    return xp.zeros_like(values) + xp.sum(values) if coupled else values


def support_function(xp, s, lam, eps, upper, program):
    """sigma_C(lam) = <y, lam_Omega> + eps ||lam_Omega|| + <v, lam_Omega^c> per neuron (the layer's, repeated,
    when coupled), in float64: the support function of C for lam >= 0 on Omega^c (+inf otherwise, which the
    callers rule out). Omega^c is empty for a linear layer (`program`, constraints.Program, gives the flags;
    eps and upper are the user's, of the neurons in s)."""
    on_omega = lam * s.on_omega
    linear = xp.sum(on_omega * s.Y, axis=1)
    if program.relu and not (isinstance(upper, float) and upper == 0):
        linear = linear + xp.sum(lam * (1.0 - s.on_omega) * upper, axis=1)
    quadratic = squared_norms(xp, on_omega, 1)
    return (per_budget(xp, xp.astype(linear, xp.float64), program.coupled)
            + eps * xp.sqrt(per_budget(xp, xp.astype(quadratic, xp.float64), program.coupled)))


def certify_infeasible(xp, s, program, dDz, XdDz, x_norm, eps, upper, tol=1e-6):
    """Neurons (all of them when coupled) whose scaled-dual increment certifies that the user's program (its eps
    and V, not the iteration's tightened ones) is infeasible.

    The increment y = rho dDz certifies that no U has U^T X in C (Farkas) when ||X y^T|| <= tol ||X||_2 ||y||
    while sigma_C(y) = <Y, y_Omega> + eps ||y_Omega|| + <V, y_Omega^c> < 0 with y >= 0 on Omega^c (OSQP's test,
    Banjac et al. 2019). The W = U block takes no part: its set is all of R^N, whose support function is finite
    only at 0, so beta dDw cannot make up for a large X y^T (counting it certified feasible cascade programs
    infeasible). Neither can the iteration's internal budget, which aims inside the user's.
    """
    def total(values):
        return per_budget(xp, values, program.coupled)

    y = s.rho[:, None] * dDz
    size = xp.sqrt(total(squared_norms(xp, y, 1)))
    aty = xp.sqrt(total(squared_norms(xp, XdDz * s.rho[None, :], 0)))
    support = support_function(xp, s, y, eps, upper, program)
    negative = (xp.sqrt(total(squared_norms(xp, xp.minimum(y * (1.0 - s.on_omega), 0.0), 1))) if program.relu
                else xp.zeros_like(size))
    y_norm = xp.sqrt(total(squared_norms(xp, s.Y, 1)))  # per neuron: no neuron's test depends on another's
    return ((size > 0) & (aty <= tol * x_norm * size) & (negative <= tol * size)
            & (support < -tol * xp.maximum(y_norm, 1e-300) * size))


def dual_bound(xp, s, Dz, XDz, true_eps, true_upper, program, widest=None):
    """A lower bound on each neuron's optimal objective (the layer's, repeated, when coupled) from the duals.

    The dual of  min sum_i c_i |u_i|  s.t.  X^T u in C  is  max -sigma_C(lam)  s.t.  |(X lam)_i| <= c_i, lam >= 0
    on Omega^c, with the support function sigma_C(lam) = <y, lam_Omega> + eps ||lam_Omega|| + <v, lam_Omega^c>.
    The ADMM's lam = rho Dz is >= 0 on Omega^c (Dz = zeta - Proj_C(zeta)) but meets the box only at the limit,
    so it is scaled into it: t = 1 / max(1, max_i |(X lam)_i| / c_i), and -t sigma_C(lam) <= the optimum by weak
    duality, for the user's eps and V (not the tightened internal ones). Exact up to rounding in the working
    precision. XDz is X Dz^T (N x k); returns float64 values in the scaled variables, whose objective
    sum_i c_i |Us_i| equals the user's.

    `widest` = (k, d, X d^T) for X's row k of largest norm, whose weight is the cheapest after equilibration
    (a bias row of ones beside rows of norm 1e-8: its box is 1e8 times narrower than theirs, and lam meets it
    too late for any t to keep the bound), d = x_k (1 x P) or, for a relu layer, x_k on each neuron's Omega
    (k x P), which keeps lam >= 0 on Omega^c. Then lam is also moved along d until |(X lam)_k| = c_k before it
    is scaled, and the larger of the two bounds is returned.
    """
    lam = s.rho[:, None] * Dz
    X_lam = s.rho[None, :] * XDz
    plain = _scaled_into_the_box(xp, s, lam, X_lam, true_eps, true_upper, program)
    if widest is None:
        return plain
    k, direction, X_direction = widest
    along = X_lam[k, :]
    excess = along - xp.clip(along, -s.cost[k, :], s.cost[k, :])
    length = squared_norms(xp, direction, 1)
    step = xp.where(length > 0, excess / xp.where(length > 0, length, 1.0), 0.0)
    moved = lam - step[:, None] * direction
    bound = _scaled_into_the_box(xp, s, moved, X_lam - X_direction * step[None, :], true_eps, true_upper, program)
    return xp.maximum(plain, bound)


def _scaled_into_the_box(xp, s, lam, X_lam, true_eps, true_upper, program):
    """-t sigma_C(lam) with t = 1 / max(1, max_i |(X lam)_i| / c_i) (dual_bound), float64."""
    sigma = support_function(xp, s, lam, true_eps, true_upper, program)
    box = xp.abs(X_lam)
    priced = s.cost > 0
    unpriced = xp.where(box > 0, xp.inf, xp.zeros_like(box))  # a free weight must have |(X lam)_i| = 0
    over = xp.max(xp.where(priced, box / xp.where(priced, s.cost, 1.0), unpriced), axis=0)
    if program.coupled:
        over = xp.zeros_like(over) + xp.max(over)
    return -sigma / xp.maximum(xp.astype(over, xp.float64), 1.0)


def rows_dual_bound(xp, s, Dz, XDz, true_eps, true_upper, program):
    """dual_bound for the rows' objective sum_g c_g ||U_g,:||: a lower bound on the layer's optimum, repeated
    for every neuron.

    The dual is  max -sigma_C(Lam)  s.t.  ||(X Lam^T)_g,:||_F <= c_g  (the Frobenius norm is its own dual norm),
    where sigma_C sums the neurons' support functions (or is the layer's, coupled). Lam = rho Dz is scaled into
    the constraint as in dual_bound: t = 1 / max(1, max_g ||(X Lam^T)_g,:|| / c_g).
    """
    lam = s.rho[:, None] * Dz
    sigma = support_function(xp, s, lam, true_eps, true_upper, program)
    total = xp.max(sigma) if program.coupled else xp.sum(sigma)  # coupled: the layer's, repeated
    row_norms = rowgroups.norms(xp, s.rho[None, :] * XDz, program.group_size)
    cost = rowgroups.firsts(xp, s.cost[:, 0], program.group_size)
    priced = cost > 0
    unpriced = xp.where(row_norms > 0, xp.inf, xp.zeros_like(row_norms))
    over = xp.max(xp.where(priced, row_norms / xp.where(priced, cost, 1.0), unpriced))
    bound = -total / xp.maximum(xp.astype(over, xp.float64), 1.0)
    return xp.zeros_like(sigma) + bound
