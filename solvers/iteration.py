"""The ADMM iteration of admm.py's docstring for one set of neurons sharing a prepared layer input: the state on
the device, the bookkeeping on the host, and the two named steps, `step` (one iteration) and `check` (residuals,
bounds and certificates, then acceptance.py's decisions, then rho), with every device-to-host transfer in `check`
or in the acceptance (finalization, repairs, support solves).

Host: which neurons are still iterating (`WorkingSet.neurons`), their restoration rounds and repair waits, and
the output. Device: every array the iteration touches. A check moves one small array of per-neuron flags to
the host; acceptance, repair and finalization each move a bounded number more, whatever the number of neurons.
"""

from __future__ import annotations

import math
from functools import partial
from typing import NamedTuple

import numpy as np

from . import rowgroups
from .acceptance import Acceptance
from .anderson import memory_or_none
from .arrays import squared_norms
from .certificates import certify_infeasible, dual_bound, per_budget, rows_dual_bound, within_gap
from .constraints import Program, ceiling, project

#: Checks between two residual-balancing updates of rho.
RHO_UPDATE_CHECKS = 5


class Previous(NamedTuple):
    """What a check compares the new state against: the previous U, W and Dz, the previous X Z^T and X Dz^T
    (None when the step did not need them), and this step's U^T X."""

    U: object
    W: object
    Dz: object
    XZ: object
    XD: object
    XU: object


class Residuals(NamedTuple):
    """A check's residuals (primal, dual), their scales, the mask within tolerance, and X Dz^T (device arrays)."""

    primal: object
    dual: object
    iterate_scale: object
    dual_scale: object
    converged: object
    XD: object


class WorkingSet:
    """The neurons still iterating: `neurons` and the bookkeeping arrays on the host; the per-neuron arrays on
    the device (neurons along axis 0 of M x P arrays, axis 1 of N x M arrays, axis 0 of vectors)."""

    ROWS = ("Y", "on_omega", "Z", "Dz")
    COLUMNS = ("U", "W", "Dw", "cost")
    VECTORS = ("rho", "tol_factor", "lower_bound")
    HOST = ("neurons", "rounds_left", "repair_wait", "failed_repairs", "support_tried", "unproven_checks",
            "inside_margin", "tight")
    #: Optional per-neuron arrays (None or a float when the program has none): the relu layer's ceiling on Z
    #: (constraints.ceiling), eps (M, 1) per neuron, and X (x_k on Omega)^T (N, M), the dual bound's direction
    #: through X (certificates.dual_bound).
    OPTIONAL_ROWS = ("ceiling", "eps")
    OPTIONAL_COLUMNS = ("X_widest",)

    def __init__(self, **arrays):
        self.__dict__.update(arrays)

    @classmethod
    def start(cls, be, layer, program: Program, shape, start_weights, original_eps, margin, settings) -> WorkingSet:
        """Every neuron of `program` (shape (N, P, M)), in the layer's scaled variables: U = W = the scaled start
        weights (or 0), duals 0, rho the settings' rho, the internal budget the user's less `margin` (at least
        half of it), the host counters at their start; Z is left to the caller (it is U^T X projected)."""
        xp, dt = be.xp, be.dtype(settings.dtype)
        N, P, M = shape
        cost = layer.unscale if program.l1_weights is None else xp.astype(program.l1_weights, dt) * layer.unscale
        U = (xp.zeros((N, M), dtype=dt, device=be.device) if start_weights is None
             else xp.astype(start_weights * layer.scale[:, None], dt))
        if program.coupled:
            eps = max(original_eps - float(np.linalg.norm(margin)), 0.5 * original_eps)
        else:
            eps = be.asarray(np.maximum(original_eps - margin, 0.5 * original_eps)[:, None], np.dtype(settings.dtype))
        restore = settings.restore_rounds if settings.restore else 0
        s = cls(neurons=np.arange(M), rounds_left=np.full(M, restore), repair_wait=np.zeros(M, dtype=int),
                failed_repairs=np.zeros(M, dtype=int), support_tried=np.zeros(M, dtype=bool),
                unproven_checks=np.zeros(M, dtype=int), inside_margin=np.ones(M, dtype=bool),
                tight=np.zeros(M, dtype=bool), Y=xp.astype(program.Y, dt), on_omega=xp.astype(program.omega, dt),
                original_eps=program.eps, ceiling=None, eps=eps, U=U, W=U, Z=None,
                cost=xp.zeros((N, M), dtype=dt, device=be.device) + cost,
                Dz=xp.zeros((M, P), dtype=dt, device=be.device), Dw=xp.zeros((N, M), dtype=dt, device=be.device),
                rho=xp.full((M,), float(settings.rho), dtype=dt, device=be.device),
                tol_factor=xp.ones(M, dtype=dt, device=be.device),
                lower_bound=xp.full((M,), np.nan, dtype=xp.float64, device=be.device), X_widest=None)
        if program.relu:
            s.ceiling = ceiling(xp, s.on_omega, program.upper)
        if program.relu and not program.rows:  # dual_bound's direction: the widest row on each neuron's Omega
            s.X_widest = layer.X.times_transposed(layer.widest[1] * s.on_omega)[0]
        return s

    def user_budget(self, be, program: Program):
        """The user's program of the neurons iterating: their eps (the layer's when coupled) and V (the float 0.0,
        or their rows)."""
        index = be.asarray(self.neurons)
        eps = self.original_eps if program.coupled else be.xp.take(self.original_eps, index, axis=0)
        return eps, program.upper_of(be.xp, index)

    def keep(self, xp, mask: np.ndarray, index) -> None:
        """Keep the positions of the host mask `mask` (`index`: the same positions as a device integer array)."""
        for name in self.ROWS + self.VECTORS:
            setattr(self, name, xp.take(getattr(self, name), index, axis=0))
        for name in self.COLUMNS:
            setattr(self, name, xp.take(getattr(self, name), index, axis=1))
        for name in self.HOST:
            setattr(self, name, getattr(self, name)[mask])
        for names, axis in ((self.OPTIONAL_ROWS, 0), (self.OPTIONAL_COLUMNS, 1)):
            for name in names:
                if getattr(self, name) is not None and not isinstance(getattr(self, name), float):
                    setattr(self, name, xp.take(getattr(self, name), index, axis=axis))


def to_host(be, flags, summary) -> tuple[np.ndarray, np.ndarray]:
    """The per-neuron device flags (k each) as host bool arrays (len(flags), k) and the summary numbers, in one
    transfer."""
    xp = be.xp
    stacked = xp.stack([xp.astype(flag, xp.float64) for flag in flags])
    host = be.to_host(xp.concat([xp.reshape(stacked, (-1,)), xp.astype(summary, xp.float64)]))
    k = stacked.shape[1]
    return host[:len(flags) * k].reshape(len(flags), k) > 0.5, host[len(flags) * k:]


class Iteration:
    """One ADMM solve of `program` on a prepared layer input (factor.LayerInput); `run()` returns (U, statuses,
    bounds, iterations, info) on the host."""

    def __init__(self, be, layer, program: Program, shape, start_weights, *, original_eps, margin,
                 settings, absolute_gap, repair_bytes, known_feasible=None):
        xp = self.xp = be.xp
        self.be, self.layer, self.program, self.settings = be, layer, program, settings
        self.absolute_gap, self.repair_bytes = absolute_gap, repair_bytes
        self.relu, self.coupled, self.dt = program.relu, program.coupled, be.dtype(settings.dtype)
        # The rows' group norm couples the neurons through the objective: they converge and end together.
        self.rows = program.rows
        self.together = program.coupled or program.rows
        self.shape = shape
        self.beta, self.rho0 = float(settings.beta), float(settings.rho)
        self.y_scale = settings.response_scale
        # () -> (M,) bools, the neurons whose original weights keep the budget (a certificate of infeasibility
        # for them is false): a product with X, so computed at the first certificate only
        self._known_feasible, self.known_feasible = known_feasible, None
        s = self.s = WorkingSet.start(be, layer, program, shape, start_weights, original_eps, margin, settings)
        s.Z = project(xp, layer.X.left_times(s.U.T), s, program)
        self.accelerator = (memory_or_none(be, settings.anderson, self.together)
                            if settings.stopping == "residuals" else None)
        if self.accelerator is not None:
            self.accelerator.start(s.Z, s.W)  # Dz = Dw = 0
        self.products = None  # (X Z^T, X Dz^T) of the current state, when a check has just computed them
        self.history, self.checks = [], 0
        self.acceptance = Acceptance(self)
        self.finalize = self.acceptance.finalize

    def run(self, callback=None):
        settings, s = self.settings, self.s
        iteration, stopped_by_callback = 0, False
        while iteration < settings.max_iter and s.neurons.size:
            iteration += 1
            check = settings.stopping == "residuals" and (
                iteration % settings.check_every == 0 or iteration == settings.max_iter)
            previous = self.step(check)
            if settings.stopping == "step":
                if self._step_small(previous):
                    self.finalize(np.arange(s.neurons.size), "optimal")
                    s.neurons = s.neurons[:0]
                    break
            elif check and self.check(iteration, previous, callback):
                stopped_by_callback = True
                break
        if s.neurons.size:  # unconverged (max_iter or callback)
            self.finalize(np.arange(s.neurons.size), "max_iter")
        return iteration, {"history": self.history, "stopped_by_callback": stopped_by_callback,
                           "repaired": self.acceptance.repaired,
                           "solved_on_supports": self.acceptance.solved_on_supports}

    def step(self, check: bool) -> Previous:
        """One iteration (module docstring of admm.py). Returns what a check compares against (Previous)."""
        xp, s, X, beta, a = self.xp, self.s, self.layer.X, self.beta, self.settings.relaxation
        if check and self.products is None:
            self.products = X.times_transposed(s.Z, s.Dz)
        if not check and self.layer.side == "samples":  # two products instead of four (factor.py)
            XZ = XD = None
            U, XU = self.layer.step_u(s.Z - s.Dz, s.W - s.Dw)
        else:
            if self.products is not None:
                XZ, XD = self.products
                rhs = XZ - XD + beta * (s.W - s.Dw)
            else:
                XZ = XD = None
                rhs = X.times_transposed(s.Z - s.Dz)[0] + beta * (s.W - s.Dw)
            U = self.layer.solve_u(rhs)
            XU = X.left_times(U.T)
        self.products = None
        if self.accelerator is None:  # zeta, the fixed-point variable of anderson.py
            Z_relaxed = XU if a == 1 else a * XU + (1 - a) * s.Z
            W_relaxed = U if a == 1 else a * U + (1 - a) * s.W
            zeta_z, zeta_w = Z_relaxed + s.Dz, W_relaxed + s.Dw
        else:  # the point is zeta = Z + Dz, so the plain step moves it by a (U^T X - Z, U - W), one pass less
            moves = (XU - s.Z, U - s.W) if a == 1 else (a * (XU - s.Z), a * (U - s.W))
            # checks take the plain step, so their residual formulas stay exact
            zeta_z, zeta_w = self.accelerator.step_by(*moves, accelerate=not check)
        Z_new = project(xp, zeta_z, s, self.program)
        W_new = self.shrink(zeta_w)
        previous = Previous(U=s.U, W=s.W, Dz=s.Dz, XZ=XZ, XD=XD, XU=XU)
        s.U, s.Z, s.W, s.Dz, s.Dw = U, Z_new, W_new, zeta_z - Z_new, zeta_w - W_new
        return previous

    def shrink(self, zeta_w):
        """The prox of the objective at zeta_w (N, k): the soft threshold c_ij / (rho_j beta) of each weight, or
        for rows the group soft threshold zeta_g max(0, 1 - c_g / (rho beta ||zeta_g||)) of each group of rows
        (rho is then the same for every neuron: the rows couple them)."""
        xp, s = self.xp, self.s
        threshold = s.cost / (s.rho * self.beta)[None, :]
        if not self.rows:
            return zeta_w - xp.clip(zeta_w, -threshold, threshold)
        size = self.program.group_size
        norms = rowgroups.expand(xp, rowgroups.norms(xp, zeta_w, size), size, zeta_w.shape[0])[:, None]
        row_threshold = threshold[:, :1]
        kept = norms > row_threshold
        return zeta_w * xp.where(kept, 1.0 - row_threshold / xp.where(kept, norms, 1.0), 0.0)

    def _step_small(self, previous) -> bool:
        """The published stopping rule: ||U_k - U_{k-1}||_F < step_tol (one synchronization an iteration)."""
        xp = self.xp
        step_tol = self.settings.step_tol
        N, _, M = self.shape
        step_tol = 5e-9 * N * M if step_tol is None else step_tol
        change = xp.linalg.vector_norm((self.s.U - previous.U) / self.layer.scale[:, None])
        return self.be.scalars(change)[0] < step_tol

    def check(self, iteration: int, previous, callback) -> bool:
        """Residuals, then dual bounds and certificates, then acceptance.py's decisions (the neurons done leave the
        working set), then rho. Returns True when the callback asks to stop."""
        xp, s, be = self.xp, self.s, self.be
        residuals = self._residuals(previous)
        gap_allowed = self.settings.gap_tol * max(1.0, iteration / self.settings.gap_patience)
        certified, strict, zero, infeasible = self._certificates(previous, residuals.XD, gap_allowed)
        flags, summary = to_host(be, (residuals.converged, certified, strict, zero, infeasible), xp.stack([
            xp.max(residuals.primal), xp.max(residuals.dual), xp.min(s.rho), xp.max(s.rho)]))
        converged, certified, strict, zero, infeasible = flags
        infeasible = self._believed(infeasible)
        info = {"active": int(s.neurons.size), "primal": float(summary[0]), "dual": float(summary[1]),
                "converged": float(converged.mean())}
        self.history.append((iteration, info["active"], info["primal"], info["dual"], summary[2] / self.rho0,
                             summary[3] / self.rho0))
        if callback is not None and callback(iteration, info):
            return True
        done = infeasible.copy()
        if infeasible.any():
            self.finalize(np.flatnonzero(infeasible), "infeasible")
            converged = converged & ~infeasible
        tightened = np.zeros(s.neurons.size, dtype=bool)
        if ((converged | certified) & ~infeasible).any():
            accepted, tightened = self.acceptance.decide(iteration, converged, certified & ~infeasible,
                                                         certified | zero, strict | zero, gap_allowed)
            done |= accepted
        done |= self.acceptance.rescue(iteration, done, gap_allowed)
        s.repair_wait -= 1
        if self.accelerator is not None and tightened.any():  # a new budget: the memory's differences are stale
            self.accelerator.clear(be.asarray(tightened))
        ratio = self._rho_ratio(residuals.primal, residuals.dual, residuals.iterate_scale, residuals.dual_scale)
        if done.any():
            self._keep(~done)
            ratio = None if ratio is None else xp.take(ratio, be.asarray(np.flatnonzero(~done)), axis=0)
        self.checks += 1
        if ratio is not None and s.neurons.size:
            self._rescale(ratio)
        return False

    def _residuals(self, previous: Previous) -> Residuals:
        """Primal r = (U^T X - Z, sqrt(beta)(U - W)) and dual s = rho (X dZ^T + beta dW) residuals, their scales,
        and whether they are within tolerance (Boyd et al. 2011, sec. 3.3), per neuron (per layer when coupled).
        X Dz^T is a product of its own (not an update from G U): the dual bound needs it accurate. The next
        iteration's right-hand side reuses both products (self.products)."""
        xp, s, beta, settings = self.xp, self.s, self.beta, self.settings
        total = partial(per_budget, xp, coupled=self.together)
        XZ_new, XD_new = self.layer.X.times_transposed(s.Z, s.Dz)
        self.products = (XZ_new, XD_new)
        rho, N, P, XU = s.rho, self.shape[0], self.shape[1], previous.XU
        primal = xp.sqrt(total(squared_norms(xp, XU - s.Z, 1) + beta * squared_norms(xp, s.U - s.W, 0)))
        # rho outside the squares: rho is 1e23 on features of 1e-11 (rho is the same for every neuron when coupled)
        dual = rho * xp.sqrt(total(squared_norms(xp, XZ_new - previous.XZ + beta * (s.W - previous.W), 0)))
        iterate_scale = xp.sqrt(total(xp.maximum(
            squared_norms(xp, XU, 1) + beta * squared_norms(xp, s.U, 0),
            squared_norms(xp, s.Z, 1) + beta * squared_norms(xp, s.W, 0))))
        # At the optimum X y_z^T + beta y_w = 0 (U carries no cost), so the dual scale is that of either term.
        dual_scale = rho * xp.sqrt(total(xp.maximum(squared_norms(xp, XD_new, 0),
                                                         beta**2 * squared_norms(xp, s.Dw, 0))))
        # Tightened tolerances (restoration rounds) stop at what the working precision can resolve.
        relative = xp.maximum(s.tol_factor * settings.rel_tol, 50 * float(xp.finfo(self.dt).eps))
        # The absolute terms in the residuals' units: Y's for the primal, the cost's (c = 1 / ||x_i||) for the dual.
        absolute = s.tol_factor * settings.abs_tol
        converged = ((primal <= absolute * (self.y_scale * math.sqrt(P + N)) + relative * iterate_scale)
                     & (dual <= absolute * (math.sqrt(N) / settings.cost_unit) + relative * dual_scale))
        return Residuals(primal, dual, iterate_scale, dual_scale, converged, XD_new)

    def _certificates(self, previous: Previous, XD_new, gap_allowed: float):
        """(certified, strict, zero, infeasible) on the device: each neuron's objective within gap_allowed of its
        new certified lower bound (kept in s.lower_bound), within the user's gap_tol of it, at zero, or proven
        infeasible by its dual increment."""
        xp, s = self.xp, self.s
        user_eps, user_upper = s.user_budget(self.be, self.program)
        if self.rows:
            s.lower_bound = rows_dual_bound(xp, s, s.Dz, XD_new, user_eps, user_upper, self.program)
        else:
            k, widest_row, X_widest = self.layer.widest
            if s.X_widest is not None:
                widest_row, X_widest = widest_row * s.on_omega, s.X_widest
            s.lower_bound = dual_bound(xp, s, s.Dz, XD_new, user_eps, user_upper, self.program,
                                       widest=(k, widest_row, X_widest))
        objective = self._objective()
        certified = within_gap(objective, s.lower_bound, gap_allowed, self.absolute_gap) & (objective > 0)
        strict = certified if gap_allowed <= self.settings.gap_tol else (
            within_gap(objective, s.lower_bound, self.settings.gap_tol, self.absolute_gap) & (objective > 0))
        infeasible = certify_infeasible(xp, s, self.program, s.Dz - previous.Dz, XD_new - previous.XD,
                                        self.layer.x_norm, user_eps, user_upper)
        return certified, strict, objective == 0, infeasible

    def _believed(self, infeasible: np.ndarray) -> np.ndarray:
        """The host mask of certified infeasible neurons, less those whose original weights keep the budget (a
        certificate for them is rounding); all of them in a rows layer when one is (its neurons are one program)."""
        if infeasible.any() and self._known_feasible is not None:
            if self.known_feasible is None:
                self.known_feasible = self._known_feasible()
            infeasible &= ~self.known_feasible[self.s.neurons]
        if self.rows:
            infeasible[:] = infeasible.any()
        return infeasible

    def _objective(self):
        """Each neuron's objective sum_i c_i |W_im| (the layer's, repeated, when coupled), or the rows' group
        norm sum_g c_g ||W_g,:||, repeated; in float64."""
        xp, s = self.xp, self.s
        if self.rows:
            size = self.program.group_size
            costs = rowgroups.firsts(xp, s.cost[:, 0], size)
            total = xp.sum(xp.astype(costs * rowgroups.norms(xp, s.W, size), xp.float64))
            return xp.zeros((s.neurons.size,), dtype=xp.float64, device=self.be.device) + total
        return per_budget(xp, xp.astype(xp.sum(s.cost * xp.abs(s.W), axis=0), xp.float64), self.coupled)

    def _keep(self, mask: np.ndarray) -> None:
        s, index = self.s, self.be.asarray(np.flatnonzero(mask))
        s.keep(self.xp, mask, index)
        self.products = tuple(self.xp.take(product, index, axis=1) for product in self.products)
        if self.accelerator is not None:
            self.accelerator.keep(index)

    def _rho_ratio(self, primal, dual, iterate_scale, dual_scale):
        """Residual balancing every RHO_UPDATE_CHECKS checks: the factor (per neuron) by which rho changes, when
        primal and dual residuals are out of balance by more than 5 (None between updates), within 1e-6 to 1e6
        times the layer's rho (1e-3 to 1e3 held a dead neuron whose optimum is its bias alone at the floor)."""
        if not self.settings.adaptive_rho or (self.checks + 1) % RHO_UPDATE_CHECKS:
            return None
        xp, s, tiny = self.xp, self.s, float(np.finfo(np.dtype(self.settings.dtype)).tiny)
        ratio = xp.sqrt((primal / xp.maximum(iterate_scale, tiny))
                        / xp.maximum(dual / xp.maximum(dual_scale, tiny), tiny))
        ratio = xp.where((ratio > 5) | (ratio < 0.2), xp.clip(ratio, 0.2, 5.0), 1.0)
        return xp.astype(xp.clip(s.rho * ratio, self.rho0 * 1e-6, self.rho0 * 1e6) / s.rho, self.dt)

    def _rescale(self, ratio) -> None:
        """rho_m *= ratio_m: the scaled duals (and the products that carry them) are divided by it."""
        s = self.s
        s.rho = s.rho * ratio
        s.Dz = s.Dz / ratio[:, None]
        self.products = (self.products[0], self.products[1] / ratio[None, :])
        s.Dw = s.Dw / ratio[None, :]
        if self.accelerator is not None:
            self.accelerator.rescale(ratio != 1, (s.Z + s.Dz, s.W + s.Dw))

