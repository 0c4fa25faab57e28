"""Feasibility of the ADMM's answer: exact acceptance of converged neurons, restoration of the budget, and the
certificate of an infeasible budget. See admm.py's docstring for where they sit in the iteration."""

from __future__ import annotations

import numpy as np

from .arrays import to_host


def per_budget(xp, values, coupled: bool):
    """Per-neuron values, or (coupled: one budget for the layer) their total repeated for every neuron."""
    return xp.full_like(values, values.sum()) if coupled else values


def support_function(xp, s, lam, eps, upper, coupled: bool):
    """sigma_C(lam) = <y, lam_Omega> + eps ||lam_Omega|| + <v, lam_Omega^c> per neuron (the layer's, repeated,
    when coupled), in float64: the support function of C for lam >= 0 on Omega^c (+inf otherwise, which the
    callers rule out). Omega^c is empty for a linear layer."""
    on_omega = lam * s.on_omega
    linear = (on_omega * s.Y).sum(axis=1)
    if not (np.isscalar(upper) and upper == 0):
        linear = linear + (lam * s.off_omega * upper).sum(axis=1)
    quadratic = (on_omega * on_omega).sum(axis=1)
    return (per_budget(xp, linear.astype(np.float64), coupled)
            + eps * xp.sqrt(per_budget(xp, quadratic.astype(np.float64), coupled)))


def certify_infeasible(xp, s, relu, coupled, dDz, XdDz, beta, dDw, x_norm, tol=1e-6):
    """Neurons (all of them when coupled) whose scaled-dual increment certifies infeasibility.

    The increment y = rho dDz certifies that C and {U^T X} do not meet when ||X y^T + beta y_w|| <= tol ||X||_2 ||y||
    while sigma_C(y) = <Y, y_Omega> + eps ||y_Omega|| + <V, y_Omega^c> < 0 with y >= 0 on Omega^c
    (OSQP's test, Banjac et al. 2019).
    """
    def total(values):
        return per_budget(xp, values, coupled)

    y = s.rho[:, None] * dDz
    size = xp.sqrt(total((y * y).sum(axis=1)))
    aty = xp.sqrt(total((((XdDz + beta * dDw) * s.rho[None, :]) ** 2).sum(axis=0)))
    support = support_function(xp, s, y, s.eps if coupled else s.eps.ravel(), s.upper if relu else 0.0, coupled)
    negative = xp.sqrt(total((xp.minimum(y * s.off_omega, 0) ** 2).sum(axis=1))) if relu else xp.zeros_like(size)
    y_norm = xp.sqrt(total((s.Y * s.Y).sum(axis=1)))  # per neuron: no neuron's test depends on another's
    return ((size > 0) & (aty <= tol * x_norm * size) & (negative <= tol * size)
            & (support < -tol * xp.maximum(y_norm, 1e-300) * size))


def dual_bound(xp, s, Dz, XDz, true_eps, true_upper, relu, coupled):
    """A lower bound on each neuron's optimal objective (the layer's, repeated, when coupled) from the duals.

    The dual of  min sum_i c_i |u_i|  s.t.  X^T u in C  is  max -sigma_C(lam)  s.t.  |(X lam)_i| <= c_i, lam >= 0
    on Omega^c, with the support function sigma_C(lam) = <y, lam_Omega> + eps ||lam_Omega|| + <v, lam_Omega^c>.
    The ADMM's lam = rho Dz is >= 0 on Omega^c (Dz = zeta - Proj_C(zeta)) but meets the box only at the limit,
    so it is scaled into it: t = 1 / max(1, max_i |(X lam)_i| / c_i), and -t sigma_C(lam) <= the optimum by weak
    duality, for the user's eps and V (not the tightened internal ones). Exact up to rounding in the working
    precision. XDz is X Dz^T (N x k); returns float64 values in the scaled variables, whose objective
    sum_i c_i |Us_i| equals the user's.
    """
    lam = s.rho[:, None] * Dz
    sigma = support_function(xp, s, lam, true_eps, true_upper if relu else 0.0, coupled)
    box = xp.abs(s.rho[None, :] * XDz)
    over = xp.where(s.cost > 0, box / xp.where(s.cost > 0, s.cost, 1), xp.where(box > 0, xp.inf, 0)).max(axis=0)
    if coupled:
        over = xp.full_like(over, over.max())
    return -sigma / xp.maximum(over.astype(np.float64), 1.0)


def accept_or_tighten(xp, s, converged, X64, Y64, omega64, upper64, unscale, relu, coupled, y_scale,
                       violation_tol, finalize, restore_rounds_total, certified=None, repair=None):
    """Measure the candidates' sparse iterates exactly and finalize those within budget.

    Candidates are the neurons `converged` by residuals and those whose duality gap is `certified` small. A
    converged neuron that misses its budget gets its internal budget and bound tightened by twice the measured
    excess (or, out of restoration rounds, is finalized "inaccurate"); a certified one just iterates on. With
    `repair` (admm.py's, over repair.py), a candidate that misses is first repaired on its support: a repaired one
    is final with its repaired weights and is neither tightened nor counted as missing. X64 is the layer's X in
    float64 (samples.SampleBlocks)."""
    candidates = converged if certified is None else converged | certified
    may_tighten = to_host(converged).astype(bool)[to_host(candidates).astype(bool)]
    idx = to_host(candidates).astype(bool)
    neurons = s.neurons[idx]
    U_cols = (s.W[:, candidates] * unscale).astype(np.float64)
    response = X64.left_times(U_cols.T)
    Y, omega = Y64[neurons], omega64[neurons]
    fit2 = (xp.where(omega, response - Y, 0) ** 2).sum(axis=1)
    if relu:
        upper = upper64[neurons] if not np.isscalar(upper64) else upper64
        hinge = xp.where(omega, 0, xp.maximum(response - upper, 0))
    else:
        hinge = xp.zeros_like(response)
    error2 = fit2 + (hinge * hinge).sum(axis=1)
    # Compared with the user's budget, not the tightened internal one.
    if coupled:
        over = xp.maximum(xp.sqrt(error2.sum()) - s.original_eps, 0) * xp.ones_like(error2)
    else:
        over = xp.maximum(xp.sqrt(error2) - s.original_eps[neurons], 0)
    violating = hinge.max(axis=1) > violation_tol * y_scale
    if coupled:
        violating = violating.any() | xp.zeros_like(violating)
    missed = to_host((over > 1e-12 * y_scale) | violating)
    positions = np.flatnonzero(idx)
    repaired = np.zeros(positions.size, dtype=bool)
    if repair is not None and missed.any():  # first try to restore the budget on the support found
        chosen = missed & (s.repair_wait[positions] <= 0)
        fixed = repair([int(p) for p in positions[chosen]], response[xp.asarray(chosen)])
        if fixed:
            repaired = np.isin(positions, list(fixed))
            mask = np.zeros(s.neurons.size, dtype=bool)
            mask[positions[repaired]] = True
            finalize(xp.asarray(mask), "optimal", np.stack([fixed[p] for p in positions[repaired]], axis=1))
            missed &= ~repaired
    ok = ~missed & ~repaired
    failed = missed & may_tighten  # the certified-only candidates that missed just iterate on
    rounds = s.rounds_left[idx]
    give_up = failed & (rounds == 0)
    done = np.zeros(s.neurons.size, dtype=bool)
    done[positions[ok]] = True
    if ok.any():
        finalize(xp.asarray(done), "optimal")
    done[positions[repaired]] = True
    if give_up.any():
        give_up_mask = np.zeros(s.neurons.size, dtype=bool)
        give_up_mask[positions[give_up]] = True
        finalize(xp.asarray(give_up_mask), "inaccurate")
        done |= give_up_mask
    retry = failed & (rounds > 0)
    if retry.any():
        retrying = positions[retry]
        dt = s.Y.dtype
        if coupled:
            s.eps = max(s.eps - 2 * float(over[0]), 0.0)
        else:
            shrink = xp.zeros(s.neurons.size, dtype=dt)
            shrink[xp.asarray(retrying)] = (2 * over[xp.asarray(retry)]).astype(dt)
            s.eps = xp.maximum(s.eps - shrink[:, None], 0)
        if relu and float(hinge.max()) > 0:
            # A uniform margin on the neuron's whole Omega^c bound (shifting only the violated entries moves
            # the violation elsewhere): twice its largest violation.
            if np.isscalar(s.upper):
                s.upper = xp.full(s.Y.shape, s.upper, dtype=dt)
            margin = 2 * hinge[xp.asarray(retry)].max(axis=1, keepdims=True)
            s.upper[xp.asarray(retrying)] -= margin.astype(dt) * s.off_omega[xp.asarray(retrying)]
        s.rounds_left[retrying] -= 1
        # From the third round on, also tighten the tolerances of those neurons.
        repeat = retrying[s.rounds_left[retrying] < restore_rounds_total - 2]
        s.tol_factor[xp.asarray(repeat)] *= 0.3
    return xp.asarray(done)
