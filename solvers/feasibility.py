"""Feasibility of the ADMM's answer: exact acceptance of converged neurons, restoration of the budget, and the
certificate of an infeasible budget. See admm.py's docstring for where they sit in the iteration."""

from __future__ import annotations

import numpy as np

from . import rowgroups
from .arrays import squared_norms

#: Checks a neuron converged within its budget, but whose l1 is not proven within the gap tolerance of the optimum,
#: iterates on after gap_patience iterations before it is finalized "inaccurate" (the tolerance grows meanwhile;
#: loose residual tolerances, whose aim inside the budget costs l1, stop such neurons early).
UNPROVEN_CHECKS = 50


def within_gap(objective, bound, gap_allowed: float, absolute_gap: float):
    """Is the objective proven near its optimum: objective - bound <= gap_allowed objective + absolute_gap, for a
    certified lower bound `bound` (arrays of any namespace, or floats)? The one rule every acceptance uses."""
    return objective - bound <= gap_allowed * objective + absolute_gap


def per_budget(xp, values, coupled: bool):
    """Per-neuron values, or (coupled: one budget for the layer) their total repeated for every neuron."""
    return xp.zeros_like(values) + xp.sum(values) if coupled else values


def support_function(xp, s, lam, eps, upper, coupled: bool):
    """sigma_C(lam) = <y, lam_Omega> + eps ||lam_Omega|| + <v, lam_Omega^c> per neuron (the layer's, repeated,
    when coupled), in float64: the support function of C for lam >= 0 on Omega^c (+inf otherwise, which the
    callers rule out). Omega^c is empty for a linear layer."""
    on_omega = lam * s.on_omega
    linear = xp.sum(on_omega * s.Y, axis=1)
    if not (isinstance(upper, float) and upper == 0):
        linear = linear + xp.sum(lam * (1.0 - s.on_omega) * upper, axis=1)
    quadratic = squared_norms(xp, on_omega, 1)
    return (per_budget(xp, xp.astype(linear, xp.float64), coupled)
            + eps * xp.sqrt(per_budget(xp, xp.astype(quadratic, xp.float64), coupled)))


def certify_infeasible(xp, s, relu, coupled, dDz, XdDz, x_norm, eps, upper, tol=1e-6):
    """Neurons (all of them when coupled) whose scaled-dual increment certifies that the user's program (its eps
    and V, not the iteration's tightened ones) is infeasible.

    The increment y = rho dDz certifies that no U has U^T X in C (Farkas) when ||X y^T|| <= tol ||X||_2 ||y||
    while sigma_C(y) = <Y, y_Omega> + eps ||y_Omega|| + <V, y_Omega^c> < 0 with y >= 0 on Omega^c (OSQP's test,
    Banjac et al. 2019). The W = U block takes no part: its set is all of R^N, whose support function is finite
    only at 0, so beta dDw cannot make up for a large X y^T (counting it certified feasible cascade programs
    infeasible). Neither can the iteration's internal budget, which aims inside the user's.
    """
    def total(values):
        return per_budget(xp, values, coupled)

    y = s.rho[:, None] * dDz
    size = xp.sqrt(total(squared_norms(xp, y, 1)))
    aty = xp.sqrt(total(squared_norms(xp, XdDz * s.rho[None, :], 0)))
    support = support_function(xp, s, y, eps, upper if relu else 0.0, coupled)
    negative = (xp.sqrt(total(squared_norms(xp, xp.minimum(y * (1.0 - s.on_omega), 0.0), 1))) if relu
                else xp.zeros_like(size))
    y_norm = xp.sqrt(total(squared_norms(xp, s.Y, 1)))  # per neuron: no neuron's test depends on another's
    return ((size > 0) & (aty <= tol * x_norm * size) & (negative <= tol * size)
            & (support < -tol * xp.maximum(y_norm, 1e-300) * size))


def dual_bound(xp, s, Dz, XDz, true_eps, true_upper, relu, coupled, group_size=1, widest=None):
    """A lower bound on each neuron's optimal objective (the layer's, repeated, when coupled) from the duals.

    The dual of  min sum_i c_i |u_i|  s.t.  X^T u in C  is  max -sigma_C(lam)  s.t.  |(X lam)_i| <= c_i, lam >= 0
    on Omega^c, with the support function sigma_C(lam) = <y, lam_Omega> + eps ||lam_Omega|| + <v, lam_Omega^c>.
    The ADMM's lam = rho Dz is >= 0 on Omega^c (Dz = zeta - Proj_C(zeta)) but meets the box only at the limit,
    so it is scaled into it: t = 1 / max(1, max_i |(X lam)_i| / c_i), and -t sigma_C(lam) <= the optimum by weak
    duality, for the user's eps and V (not the tightened internal ones). Exact up to rounding in the working
    precision. XDz is X Dz^T (N x k); returns float64 values in the scaled variables, whose objective
    sum_i c_i |Us_i| equals the user's. (group_size is rows_dual_bound's.)

    `widest` = (k, d, X d^T) for X's row k of largest norm, whose weight is the cheapest after equilibration
    (a bias row of ones beside rows of norm 1e-8: its box is 1e8 times narrower than theirs, and lam meets it
    too late for any t to keep the bound), d = x_k (1 x P) or, for a relu layer, x_k on each neuron's Omega
    (k x P), which keeps lam >= 0 on Omega^c. Then lam is also moved along d until |(X lam)_k| = c_k before it
    is scaled, and the larger of the two bounds is returned.
    """
    lam = s.rho[:, None] * Dz
    X_lam = s.rho[None, :] * XDz
    plain = _scaled_into_the_box(xp, s, lam, X_lam, true_eps, true_upper, relu, coupled)
    if widest is None:
        return plain
    k, direction, X_direction = widest
    along = X_lam[k, :]
    excess = along - xp.clip(along, -s.cost[k, :], s.cost[k, :])
    length = squared_norms(xp, direction, 1)
    step = xp.where(length > 0, excess / xp.where(length > 0, length, 1.0), 0.0)
    moved = lam - step[:, None] * direction
    bound = _scaled_into_the_box(xp, s, moved, X_lam - X_direction * step[None, :], true_eps, true_upper, relu,
                                 coupled)
    return xp.maximum(plain, bound)


def _scaled_into_the_box(xp, s, lam, X_lam, true_eps, true_upper, relu, coupled):
    """-t sigma_C(lam) with t = 1 / max(1, max_i |(X lam)_i| / c_i) (dual_bound), float64."""
    sigma = support_function(xp, s, lam, true_eps, true_upper if relu else 0.0, coupled)
    box = xp.abs(X_lam)
    priced = s.cost > 0
    unpriced = xp.where(box > 0, xp.inf, xp.zeros_like(box))  # a free weight must have |(X lam)_i| = 0
    over = xp.max(xp.where(priced, box / xp.where(priced, s.cost, 1.0), unpriced), axis=0)
    if coupled:
        over = xp.zeros_like(over) + xp.max(over)
    return -sigma / xp.maximum(xp.astype(over, xp.float64), 1.0)


def rows_dual_bound(xp, s, Dz, XDz, true_eps, true_upper, relu, coupled, group_size):
    """dual_bound for the rows' objective sum_g c_g ||U_g,:||: a lower bound on the layer's optimum, repeated
    for every neuron.

    The dual is  max -sigma_C(Lam)  s.t.  ||(X Lam^T)_g,:||_F <= c_g  (the Frobenius norm is its own dual norm),
    where sigma_C sums the neurons' support functions (or is the layer's, coupled). Lam = rho Dz is scaled into
    the constraint as in dual_bound: t = 1 / max(1, max_g ||(X Lam^T)_g,:|| / c_g).
    """
    lam = s.rho[:, None] * Dz
    sigma = support_function(xp, s, lam, true_eps, true_upper if relu else 0.0, coupled)
    total = xp.max(sigma) if coupled else xp.sum(sigma)  # coupled: the layer's, repeated
    row_norms = rowgroups.norms(xp, s.rho[None, :] * XDz, group_size)
    cost = rowgroups.firsts(xp, s.cost[:, 0], group_size)
    priced = cost > 0
    unpriced = xp.where(row_norms > 0, xp.inf, xp.zeros_like(row_norms))
    over = xp.max(xp.where(priced, row_norms / xp.where(priced, cost, 1.0), unpriced))
    bound = -total / xp.maximum(xp.astype(over, xp.float64), 1.0)
    return xp.zeros_like(sigma) + bound


def measure_candidates(be, s, positions: np.ndarray, X64, program, unscale, relu: bool, coupled: bool):
    """The candidates' sparse iterates measured exactly in float64: (weights (N, k), responses (k, P), excess
    (k,) of the response error sqrt(fit^2 + ||(U^T X - V)_+ on Omega^c||^2) over the user's budget (the layer's,
    repeated, when coupled), largest Omega^c violation (k,)). `positions` index the working set (host); `program`
    is the user's program on the device (iteration.Program)."""
    xp = be.xp
    index = be.asarray(positions)
    neurons = be.asarray(s.neurons[positions])
    weights = xp.astype(xp.take(s.W, index, axis=1) * unscale, xp.float64)
    response = X64.left_times(weights.T)
    Y, omega = xp.take(program.Y, neurons, axis=0), xp.take(program.omega, neurons, axis=0)
    fit2 = xp.sum(xp.where(omega, response - Y, 0.0) ** 2, axis=1)
    if relu:
        upper = program.upper if isinstance(program.upper, float) else xp.take(program.upper, neurons, axis=0)
        hinge = xp.where(omega, 0.0, xp.maximum(response - upper, 0.0))
    else:
        hinge = xp.zeros_like(response)
    error2 = fit2 + xp.sum(hinge * hinge, axis=1)
    # Compared with the user's budget, not the tightened internal one.
    if coupled:
        excess = xp.zeros_like(error2) + xp.maximum(xp.sqrt(xp.sum(error2)) - program.eps, 0.0)
    else:
        excess = xp.maximum(xp.sqrt(error2) - xp.take(program.eps, neurons), 0.0)
    return weights, response, excess, xp.max(hinge, axis=1)


def tighten(be, s, retrying: np.ndarray, excess, violation, relu: bool, coupled: bool, rounds: int) -> None:
    """Tighten the internal budget of the working-set positions `retrying` (host) by twice their measured
    `excess` and, when they violate Omega^c, their whole Omega^c bound by twice their largest `violation`
    (shifting only the violated entries moves the violation elsewhere); from the third of the `rounds` allowed
    on, their stopping tolerances too (by 0.3; all the neurons' when they are coupled). excess and violation
    are (k,) host arrays for those positions."""
    xp, dt = be.xp, s.Y.dtype
    if coupled:
        s.eps = max(s.eps - 2 * float(excess[0]), 0.0)
    else:
        shrink = np.zeros(s.neurons.size)
        shrink[retrying] = 2 * excess
        s.eps = xp.maximum(s.eps - be.asarray(shrink[:, None], dt), 0.0)
    if relu and float(violation.max()) > 0:
        margin = np.zeros(s.neurons.size)
        margin[retrying] = 2 * violation
        s.ceiling = s.ceiling - be.asarray(margin[:, None], dt)  # +inf on Omega stays +inf
    s.rounds_left[retrying] -= 1
    s.tight[retrying] = True
    late = retrying[s.rounds_left[retrying] < rounds - 2]
    if late.size:
        factor = np.ones(s.neurons.size)
        factor[slice(None) if coupled else late] = 0.3
        s.tol_factor = s.tol_factor * be.asarray(factor, s.tol_factor.dtype)


def back_to_the_program(be, s, positions: np.ndarray, program) -> None:
    """Give the tightened working-set `positions` (host; per-neuron budgets) the user's budget and Omega^c bound
    again. A tightened neuron converges to the tightened program's optimum, which lies above the user's (1% on a
    neuron of MNIST layer 1 whose whole Omega^c bound was lowered by twice a violation of 8e-3, where 0.5% is
    the gap tolerance); on the user's program it converges near the user's optimum, and what it then misses is
    repaired or tightened again (one restoration round fewer)."""
    xp = be.xp
    s.tight[positions] = False
    aim_at_the_budget(be, s, positions, program.eps, coupled=False)
    if s.ceiling is not None:
        mask = np.zeros(s.neurons.size, dtype=bool)
        mask[positions] = True
        user = (program.upper if isinstance(program.upper, float)
                else xp.take(program.upper, be.asarray(s.neurons), axis=0))
        s.ceiling = xp.where(be.asarray(mask)[:, None], ceiling(xp, s.on_omega, user), s.ceiling)


def ceiling(xp, on_omega, upper):
    """The relu projection's bound on Z (iteration.project): V on Omega^c, +inf on Omega (where the fit, not V,
    holds Z); on_omega (k, P) is Omega as floats, upper V (k, P) or a float. In on_omega's dtype."""
    bound = xp.zeros_like(on_omega) + (upper if isinstance(upper, float) else xp.astype(upper, on_omega.dtype))
    return xp.where(on_omega > 0, xp.inf, bound)


def aim_at_the_budget(be, s, positions: np.ndarray, user_eps, coupled: bool) -> None:
    """Give the working-set `positions` (host) the user's budget `user_eps` (the program's: (M,) on the device,
    or the layer's float) as their internal one, in place of the margin inside it."""
    s.inside_margin[positions] = False
    if coupled:
        s.eps = float(user_eps)
        return
    xp = be.xp
    mask = np.zeros(s.neurons.size, dtype=bool)
    mask[positions] = True
    user = xp.astype(xp.take(user_eps, be.asarray(s.neurons), axis=0), s.eps.dtype)[:, None]
    s.eps = xp.where(be.asarray(mask)[:, None], user, s.eps)


def accept_or_tighten(be, s, converged: np.ndarray, certified: np.ndarray, proven: np.ndarray, X64, program, unscale,
                      relu, coupled, y_scale, violation_tol, finalize, restore_rounds_total, repair=None,
                      count_unproven: bool = True):
    """Measure the candidates' sparse iterates exactly and finalize those within budget whose l1 is `proven`
    within tolerance of the optimum "optimal"; returns the host masks of the working-set positions that are done
    and of those whose budget was tightened.

    Candidates are the neurons `converged` by residuals and those whose duality gap is `certified` small (host
    masks). A converged neuron within budget whose gap is not proven small iterates on: first, when its budget
    was never tightened, at the user's budget instead of the margin inside it that the iteration aims at
    (admm.py: a tighter budget has a larger optimal l1, 2.5 to 3% larger at a margin of 0.4% of eps on VGG-11's
    classifier.0, which no gap tolerance accepts); then with a gap tolerance that grows with the iterations,
    UNPROVEN_CHECKS checks at most once `count_unproven` (after gap_patience iterations), then it is finalized
    "inaccurate". A converged neuron
    that misses its budget gets its internal budget and bound tightened by twice the measured excess (or, out of
    restoration rounds, is finalized "inaccurate"); a certified one just iterates on. The second mask returned
    marks every neuron whose internal budget changed. With `repair` (admm.py's,
    over repair.py), candidates that miss are first repaired on their supports: a repaired one is final with its
    repaired weights and is neither tightened nor counted as missing. X64 is the layer's X in float64
    (samples.SampleBlocks). One device-to-host transfer, plus the repair's."""
    positions = np.flatnonzero(converged | certified)
    weights, response, excess, violation = measure_candidates(be, s, positions, X64, program, unscale, relu, coupled)
    excess, violation = be.to_host(be.xp.stack([excess, violation]))
    missed = (excess > 1e-12 * y_scale) | (violation > violation_tol * y_scale)
    if coupled:
        missed = np.full(positions.size, bool(missed.any()))
    done = np.zeros(s.neurons.size, dtype=bool)
    if repair is not None and missed.any():  # first try to restore the budget on the support found
        chosen = np.flatnonzero(missed & (s.repair_wait[positions] <= 0))
        repaired = repair(positions[chosen], weights, response, chosen) if chosen.size else np.zeros(0, dtype=bool)
        done[positions[chosen[repaired]]] = True
        missed[chosen[repaired]] = False
    within = ~missed & ~done[positions]
    accepted = within & proven[positions]
    if accepted.any():
        finalize(positions[accepted], "optimal")
    done[positions[accepted]] = True
    unproven = positions[within & ~proven[positions] & converged[positions]]
    aiming_inside = unproven[s.inside_margin[unproven] & (s.rounds_left[unproven] == restore_rounds_total)]
    if aiming_inside.size:
        aim_at_the_budget(be, s, aiming_inside, program.eps, coupled)
        unproven = np.setdiff1d(unproven, aiming_inside)
    loosened = unproven[s.tight[unproven]] if not coupled else unproven[:0]
    if loosened.size:  # a tightened program's optimum lies above the user's: iterate on the user's program again
        back_to_the_program(be, s, loosened, program)
        unproven = np.setdiff1d(unproven, loosened)
    s.unproven_checks[unproven] += count_unproven
    stuck = unproven[s.unproven_checks[unproven] >= UNPROVEN_CHECKS]
    if stuck.size:  # converged within budget, its l1 still not proven within tolerance: say so
        finalize(stuck, "inaccurate")
        done[stuck] = True
    failed = missed & converged[positions]  # the certified-only candidates that missed just iterate on
    rounds = s.rounds_left[positions]
    give_up = failed & (rounds == 0)
    if give_up.any():
        finalize(positions[give_up], "inaccurate")
        done[positions[give_up]] = True
    retry = failed & (rounds > 0)
    if retry.any():
        retrying = positions[retry]
        tighten(be, s, retrying, excess[retry], violation[retry], relu, coupled, restore_rounds_total)
    tightened = np.zeros(s.neurons.size, dtype=bool)
    tightened[positions[retry]] = True
    tightened[aiming_inside] = True
    tightened[loosened] = True
    return done, tightened
