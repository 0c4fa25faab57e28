"""Acceptance: which of the neurons a check proposes (converged by their residuals or certified by their gap)
end, and with what weights and status. A neuron ends "optimal" only when its measured weights keep its budget and
its objective is within the gap allowed of its certified bound (certificates.within_gap); else it is repaired on
its support (repair.py), solved there by the interior point (support_ipm.py, the few that stay), tightened for
another round (constraints.tighten), or left to iterate. `Acceptance` owns these decisions, their counters and
the solve's output on the host; the iteration hands it its working set and reads back the masks it decides.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import constraints, rowgroups, support_ipm
from .certificates import within_gap
from .repair import repair_on_supports

#: Checks a neuron converged within its budget, but whose l1 is not proven within the gap tolerance of the optimum,
#: iterates on after gap_patience iterations before it is finalized "inaccurate" (the tolerance grows meanwhile;
#: loose residual tolerances, whose aim inside the budget costs l1, stop such neurons early).
UNPROVEN_CHECKS = 50
#: Checks a neuron waits after a failed repair before trying again.
REPAIR_WAIT_CHECKS = 5
#: A neuron past gap_patience iterations whose repairs failed (or missed the gap tolerance) this many times is
#: solved on its support by the interior point (support_ipm.py) rather than left to the growing gap tolerance,
#: once (a support solve that proves nothing is not tried again) and, for a relu layer, when support_ipm.affordable:
#: its cost grows with the support and with the samples of Omega^c it needs as cuts (docs/solver.md). A linear
#: layer's support program has no cuts (its fit is a cone of |S| + 1 entries): tried whenever a neuron is stuck,
#: and again.
FAILED_REPAIRS = 2
#: ... and (relu) once no more than max(STRAGGLERS, STRAGGLER_FRACTION M) of the M neurons are still iterating
#: (the last of them keep the layer iterating; before that the iteration runs on for the others whatever one costs).
STRAGGLERS = 4
STRAGGLER_FRACTION = 1 / 16
#: Bytes that one batch of repairs may gather at most (each neuron's violated samples' columns of X, float64);
#: the memory plan may allow less (repair_bytes).
REPAIR_BATCH_BYTES = 2**27
#: Arrays the size of a repair batch's gathered columns that exist at once (the gather, its float64 form, the
#: masked B, its Gram's operands), measured with tracemalloc.
REPAIR_COPIES = 5


@dataclass
class Output:
    """The solve's answer on the host: each neuron's weights U (N, M), certified bound and status."""

    U: np.ndarray
    bound: np.ndarray
    status: np.ndarray

    @classmethod
    def empty(cls, N: int, M: int) -> Output:
        return cls(np.zeros((N, M)), np.full(M, np.nan), np.full(M, "max_iter", dtype=object))


class Acceptance:
    """The acceptance of one Iteration (module docstring): its working set `s`, layer input, device program and
    settings; `decide` returns the host masks (done, tightened) of a check's candidates."""

    def __init__(self, iteration):
        for name in ("be", "xp", "s", "layer", "program", "settings", "shape", "relu", "coupled", "y_scale",
                     "absolute_gap", "repair_bytes"):
            setattr(self, name, getattr(iteration, name))
        N, _, M = self.shape
        # Without a ReLU the support's program has no cuts: a small cone program, tried at once (_repair_batch)
        self.stragglers = max(STRAGGLERS, math.ceil(STRAGGLER_FRACTION * M)) if self.relu else M
        self.rescue_after = self.settings.max_iter // 2  # after which a support is solved whatever it costs
        self.output = Output.empty(N, M)
        self.repaired = self.solved_on_supports = 0
        self.iteration = 0

    def decide(self, iteration: int, converged: np.ndarray, certified: np.ndarray, proven: np.ndarray,
               strict: np.ndarray, gap_allowed: float):
        """The host masks (done, tightened) for the candidates (converged | certified): "optimal" only within
        gap_allowed of the certified bound (or at l1 = 0, the least there is; `proven` marks both, `strict` the
        same within the user's gap_tol)."""
        self.iteration = iteration
        count_unproven = iteration > self.settings.gap_patience
        if self.program.rows:
            return self._accept_together(converged, certified, proven, count_unproven, gap_allowed)
        return self._accept_each(converged, certified, proven, strict, count_unproven, gap_allowed)

    def _accept_each(self, converged: np.ndarray, certified: np.ndarray, proven: np.ndarray, strict: np.ndarray,
                     count_unproven: bool, gap_allowed: float):
        """The candidates' sparse iterates measured exactly: those within budget whose l1 is `proven` within
        tolerance end "optimal"; returns the host masks of the working-set positions that are done and of those
        whose internal budget changed.

        Candidates that miss are first repaired on their supports (repair.py; per-neuron budgets, with
        repair_misses): a repaired one ends with its repaired weights. A converged candidate that still misses gets
        its internal budget and bound tightened by twice the measured excess (constraints.tighten), or, out of
        restoration rounds, ends "inaccurate"; a certified-only one iterates on. A converged one within budget whose
        gap is not proven small iterates on (_iterate_on); one proven only within the widened gap_allowed is first
        solved on its support (_proven_on_supports). One device-to-host transfer, plus the repair's."""
        s = self.s
        positions = np.flatnonzero(converged | certified)
        weights, response, excess, violation, missed = self._measured(positions)
        if self.coupled:
            missed = np.full(positions.size, bool(missed.any()))
        done = np.zeros(s.neurons.size, dtype=bool)
        if not self.coupled and self.settings.repair_misses and missed.any():
            chosen = np.flatnonzero(missed & (s.repair_wait[positions] <= 0))
            repaired = (self.repair(positions[chosen], weights, response, chosen, gap_allowed) if chosen.size
                        else np.zeros(0, dtype=bool))
            done[positions[chosen[repaired]]] = True
            missed[chosen[repaired]] = False
        within = ~missed & ~done[positions]
        widened = np.flatnonzero(within & proven[positions] & ~strict[positions])
        if widened.size and not self.coupled:
            solved = self._proven_on_supports(positions[widened], self.xp.take(weights, self.be.asarray(widened),
                                                                                 axis=1))
            done[positions[widened[solved]]] = True
        self._end(positions[within & proven[positions] & ~done[positions]], "optimal", done)
        moved = self._iterate_on(positions[within & ~proven[positions] & converged[positions]], count_unproven, done)
        failed = missed & converged[positions]  # the certified-only candidates that missed just iterate on
        rounds = s.rounds_left[positions]
        self._end(positions[failed & (rounds == 0)], "inaccurate", done)
        retry = failed & (rounds > 0)
        if retry.any():
            constraints.tighten(self.be, s, positions[retry], excess[retry], violation[retry], self.program,
                                self.settings.restore_rounds)
        tightened = np.zeros(s.neurons.size, dtype=bool)
        tightened[positions[retry]] = True
        tightened[moved] = True
        return done, tightened

    def _proven_on_supports(self, positions: np.ndarray, weights) -> np.ndarray:
        """Neurons within budget whose l1 is proven only within the gap tolerance widened after gap_patience (the
        working-set `positions`, their measured or repaired `weights` (N, k) on the device) solved on their
        supports by the interior point to the user's gap_tol, once, where it is cheap ((2 |S|)^3 <= SUPPORT_COST
        N P, support_ipm.affordable, at any iteration): a ResNet-20 conv neuron (145 inputs, P = 5,000, |S| = 65 to
        84) in 0.03 to 0.1 s, its l1 then proven within 1e-4 where the ADMM's bound stayed 0.5 to 0.7% below.
        Larger supports cost more than they are worth: in cascade at g = 0.5, 26 neurons of layer2.1.conv1 (289
        inputs, |S| = 140 to 220) took 126 s where the ADMM takes the layer 8 s. Those it proves end "optimal";
        returns their host mask. The others end as the widened tolerance accepted them (admm.py relabels them
        "suboptimal")."""
        solved = np.zeros(positions.size, dtype=bool)
        untried = np.flatnonzero(~self.s.support_tried[positions])
        if untried.size:
            solved[untried] = self._solve_on_supports(positions[untried], self.xp.take(
                weights, self.be.asarray(untried), axis=1), self.settings.gap_tol, rescue_after=math.inf)
        return solved

    def rescue(self, iteration: int, done: np.ndarray, gap_allowed: float) -> np.ndarray:
        """The host mask of the working set's neurons ended by the rescue: past gap_patience iterations, once no
        more than `stragglers` iterate, each tightened relu neuron (constraints.tighten) not yet tried (nor `done`)
        is solved on the support of its sparse iterate, candidate or not, where support_ipm.affordable (whatever
        it costs after half of max_iter): a tightened program can stall short of its residual tolerances and never
        be a candidate again. ResNet-20's layer1.0.conv1 in cascade at g = 0.01 (N = 145, P = 5,000, a budget 1.05
        times the trained weights' fit): a neuron failed its repairs from iteration 1,000, was tightened at 1,700
        into a program whose residual then stalled at 5e-2, and ended at max_iter = 10,000 over its budget (a dense
        fallback); on its support (|S| = 112) the interior point solves it in about a second. One that keeps its
        budget there with its l1 unproven ends "inaccurate" (a trim's crossover takes it)."""
        s, ended = self.s, np.zeros(self.s.neurons.size, dtype=bool)
        if (not self.relu or self.coupled or self.program.rows or iteration <= self.settings.gap_patience
                or s.neurons.size > self.stragglers):
            return ended
        untried = np.flatnonzero(s.tight & ~s.support_tried & ~done)
        if untried.size and iteration < self.rescue_after:  # only the cheap ones are measured (one small transfer)
            xp, be = self.xp, self.be
            supports = be.to_host(xp.sum(xp.astype(xp.take(s.W, be.asarray(untried), axis=1) != 0, xp.int64), axis=0))
            untried = untried[[support_ipm.cheap(int(size), *self.shape[:2]) for size in supports]]
        if untried.size:
            self.iteration = iteration
            ended[untried] = self._solve_on_supports(untried, self._measured(untried)[0], gap_allowed,
                                                     unproven="inaccurate")
        return ended

    def _iterate_on(self, unproven: np.ndarray, count_unproven: bool, done: np.ndarray) -> np.ndarray:
        """Converged neurons within budget whose l1 is not proven within tolerance (working-set positions) iterate
        on: first, when their budget was never tightened, at the user's budget instead of the margin inside it
        that the iteration aims at (a tighter budget has a larger optimal l1, which no gap tolerance accepts:
        admm.py); a tightened one back at the user's program; the others with a gap tolerance that grows with the
        iterations, UNPROVEN_CHECKS checks at most once `count_unproven`, then they end "inaccurate" (marked in
        `done`). Returns the positions whose internal budget changed."""
        s, be = self.s, self.be
        aiming_inside = unproven[s.inside_margin[unproven] & (s.rounds_left[unproven] == self.settings.restore_rounds)]
        if aiming_inside.size:
            constraints.aim_at_the_budget(be, s, aiming_inside, self.program)
            unproven = np.setdiff1d(unproven, aiming_inside)
        loosened = unproven[s.tight[unproven]] if not self.coupled else unproven[:0]
        if loosened.size:  # a tightened program's optimum lies above the user's: iterate on the user's program
            constraints.back_to_the_program(be, s, loosened, self.program)
            unproven = np.setdiff1d(unproven, loosened)
        s.unproven_checks[unproven] += count_unproven
        self._end(unproven[s.unproven_checks[unproven] >= UNPROVEN_CHECKS], "inaccurate", done)
        return np.concatenate([aiming_inside, loosened])

    def _end(self, positions: np.ndarray, status: str, done: np.ndarray) -> None:
        """Finalize the working-set `positions` (host) with their sparse iterates and `status`; mark them done."""
        if positions.size:
            self.finalize(positions, status)
        done[positions] = True

    def _measured(self, positions: np.ndarray):
        """The sparse iterates of the working-set `positions` measured exactly (constraints.measure_candidates):
        their weights (N, k) and response (k, P) on the device, and on the host (one transfer) each one's
        budget excess, Omega^c violation and whether it misses (beyond rounding, or violation_tol)."""
        weights, response, excess, violation = constraints.measure_candidates(
            self.be, self.s, positions, self.layer.X64, self.program, self.layer.unscale)
        excess, violation = self.be.to_host(self.xp.stack([excess, violation]))
        missed = (excess > 1e-12 * self.y_scale) | (violation > self.settings.violation_tol * self.y_scale)
        return weights, response, excess, violation, missed

    def _accept_together(self, converged: np.ndarray, certified: np.ndarray, proven: np.ndarray,
                         count_unproven: bool, gap_allowed: float):
        """accept_or_tighten for neurons that end together (rows): all of them "optimal" when every one keeps its
        budget (as it is, or repaired on its support, which keeps the zero rows zero: in float32 the residuals
        can stall above their tolerance while the gap is closed, and the repair ends it) and the layer's
        objective is proven within tolerance; else the neurons that miss are tightened (a layer converged by its
        residuals) or all iterate on. Returns the host masks (done, tightened)."""
        be, s, settings = self.be, self.s, self.settings
        everyone = np.arange(s.neurons.size)
        nothing = np.zeros(s.neurons.size, dtype=bool)
        weights, response, excess, violation, missed = self._measured(everyone)
        if not missed.any():
            if proven.all():
                self.finalize(everyone, "optimal")
                return ~nothing, nothing
            s.unproven_checks += int(count_unproven and converged.all())
            if s.unproven_checks[0] >= UNPROVEN_CHECKS:
                self.finalize(everyone, "inaccurate")
                return ~nothing, nothing
            return nothing, nothing
        if not self.coupled and settings.repair_misses and self._repair_together(weights, response, missed,
                                                                                   gap_allowed):
            return ~nothing, nothing
        if not converged.all():  # certified only: iterate on (its gap closes, or its residuals converge)
            return nothing, nothing
        if (s.rounds_left[missed] == 0).any():
            self.finalize(everyone, "inaccurate")
            return ~nothing, nothing
        retrying = np.flatnonzero(missed)
        constraints.tighten(be, s, retrying, excess[missed], violation[missed], self.program,
                            settings.restore_rounds)
        return nothing, missed

    def _repair_together(self, weights, response, missed: np.ndarray, gap_allowed: float) -> bool:
        """Repair the neurons `missed` (host mask) on their supports (repair.py; per-neuron budgets) and
        finalize every neuron "optimal" when all are repaired and the layer's objective, with the repaired
        columns, is within gap_allowed of its certified bound. `weights` (N, M) and `response` (M, P) are the
        measured iterates. Returns whether it finalized them."""
        xp, be, s, program = self.xp, self.be, self.s, self.program
        positions = np.flatnonzero(missed)
        new, ok = self._repaired(positions, positions, weights, response)
        old = xp.take(weights, be.asarray(positions), axis=1)
        size = program.group_size
        squares = xp.sum(weights**2, axis=1) - xp.sum(old**2, axis=1) + xp.sum(new**2, axis=1)
        norms = xp.sqrt(xp.maximum(rowgroups.sums(xp, squares, size), 0.0))
        objective = (xp.sum(norms) if program.l1_weights is None
                     else xp.sum(rowgroups.firsts(xp, program.l1_weights[:, 0], size) * norms))
        bound = s.lower_bound[0]
        accepted = be.scalars(xp.all(ok) & within_gap(objective, bound, gap_allowed, self.absolute_gap))[0]
        if not accepted:
            s.repair_wait[positions] = REPAIR_WAIT_CHECKS
            return False
        self.finalize(np.flatnonzero(~missed), "optimal")
        self.finalize(positions, "optimal", new)
        self.repaired += int(positions.size)
        return True

    def finalize(self, positions: np.ndarray, status: str, weights=None, bounds=None) -> None:
        """Write the working-set `positions` (host) to the output with `status`: their sparse iterates (or the
        given float64 `weights`, N x k on the device) and their certified bounds (or the given host `bounds`), in
        one transfer."""
        xp, s = self.xp, self.s
        index = self.be.asarray(positions)
        if weights is None:
            weights = xp.astype(xp.take(s.W, index, axis=1) * self.layer.unscale, xp.float64)
        host = self.be.to_host(xp.concat([weights, xp.take(s.lower_bound, index, axis=0)[None, :]], axis=0))
        neurons = s.neurons[positions]
        self.output.U[:, neurons] = host[:-1]
        self.output.bound[neurons] = host[-1] if bounds is None else bounds
        self.output.status[neurons] = status

    def repair(self, positions: np.ndarray, weights, response, chosen: np.ndarray, gap_allowed: float):
        """Repair the candidates `chosen` (host indices into the measured `weights` (N, k) and `response` (k, P))
        at working-set `positions` on their supports, in batches (repair.py); finalize those whose repaired
        weights stay within gap_allowed of their certified bound. Returns the host mask of the repaired ones."""
        N, P, _ = self.shape
        # B's copies (repair.py's _constraints) for a batch's gathered columns, at 64 violated samples each
        batch = max(1, self.repair_bytes // (REPAIR_COPIES * 8 * N * 64))
        repaired = np.zeros(positions.size, dtype=bool)
        for first in range(0, positions.size, batch):
            part = slice(first, first + batch)
            repaired[part] = self._repair_batch(positions[part], weights, response, chosen[part], gap_allowed)
        return repaired

    def _repaired(self, positions: np.ndarray, chosen: np.ndarray, weights, response):
        """repair_on_supports (repair.py) for the working-set `positions` (host), whose measured iterates are the
        columns `chosen` (host) of `weights` (N, k) and the rows `chosen` of `response` (k, P): (weights, ok)."""
        xp, be, program = self.xp, self.be, self.program
        pick, neurons = be.asarray(chosen), be.asarray(self.s.neurons[positions])

        def rows(array):
            return array if isinstance(array, float) else xp.take(array, neurons, axis=0)

        tau = 0.1 * self.settings.violation_tol * self.y_scale
        return repair_on_supports(be, self.layer.X, xp.take(response, pick, axis=0), rows(program.Y),
                                  rows(program.omega), rows(program.upper), xp.take(weights, pick, axis=1),
                                  (1 - 1e-4) * rows(program.eps), tau, self.layer.scale)

    def _repair_batch(self, positions, weights, response, chosen, gap_allowed):
        xp, be, s, program = self.xp, self.be, self.s, self.program
        neurons = be.asarray(s.neurons[positions])
        new_weights, ok = self._repaired(positions, chosen, weights, response)
        magnitude = xp.abs(new_weights)
        if program.l1_weights is not None:
            magnitude = xp.take(program.l1_weights, neurons, axis=1) * magnitude
        objective = xp.sum(magnitude, axis=0)
        bound = xp.take(s.lower_bound, be.asarray(positions), axis=0)
        accepted, strict = be.to_host(xp.stack([ok & within_gap(objective, bound, gap, self.absolute_gap)
                                                for gap in (gap_allowed, self.settings.gap_tol)]))
        widened = np.flatnonzero(accepted & ~strict)
        finished = np.zeros(positions.size, dtype=bool)
        if widened.size:
            finished[widened] = self._proven_on_supports(positions[widened], xp.take(
                new_weights, be.asarray(widened), axis=1))
        repaired = np.flatnonzero(accepted & ~finished)
        if repaired.size:
            self.finalize(positions[repaired], "optimal", xp.take(new_weights, be.asarray(repaired), axis=1))
            self.repaired += int(repaired.size)
        s.failed_repairs[positions[~accepted]] += 1
        stuck = ~accepted & ~s.support_tried[positions] & (s.failed_repairs[positions] >= FAILED_REPAIRS) & (
            self.iteration > self.settings.gap_patience) & (s.neurons.size <= self.stragglers)
        if stuck.any():
            accepted[stuck] = self._solve_on_supports(positions[stuck], xp.take(weights, be.asarray(chosen[stuck]),
                                                                                   axis=1), gap_allowed)
        s.repair_wait[positions[~accepted]] = REPAIR_WAIT_CHECKS
        return accepted

    def _solve_on_supports(self, positions: np.ndarray, weights, gap_allowed: float, rescue_after: float | None = None,
                           unproven: str | None = None):
        """support_ipm.py for the working-set `positions` (host), whose measured iterates are `weights` (N, k,
        float64 on the device), aiming at the user's gap_tol: those proven within gap_allowed that keep the budget
        (measured exactly) are finalized "optimal", and with an `unproven` status those that keep it unproven end
        with that status. A relu neuron is solved where support_ipm.affordable, whatever it costs after
        `rescue_after` iterations (self.rescue_after unless given). Returns the host mask of those ended. A few
        transfers a neuron: this is for the few that stay."""
        be = self.be
        X = support_ipm.LayerX(self.layer.X64, be, be.to_host(self.layer.scale))
        bounds = be.to_host(self.xp.take(self.s.lower_bound, be.asarray(positions), axis=0))
        solved = np.zeros(positions.size, dtype=bool)
        programs = host_programs(be, self.program, self.s.neurons[positions], self.shape[0],
                                 0.1 * self.settings.violation_tol * self.y_scale)  # tau: the repair's margin
        for j, (neuron, start) in enumerate(zip(programs, be.to_host(weights).T, strict=True)):
            if self.relu and not support_ipm.affordable(start, self.shape[1], self.iteration, self.rescue_after
                                                        if rescue_after is None else rescue_after):
                continue
            self.s.support_tried[positions[j]] = self.relu  # a linear layer's is cheap: tried again
            answer = support_ipm.solve_on_support(neuron, X, start, self.settings.gap_tol)
            if answer is None:
                continue
            u, bound = answer[0], max(answer[1], float(bounds[j]))
            response = X.response(u)
            within = (np.linalg.norm((response - neuron["y"])[neuron["omega"]]) <= neuron["eps"]
                      and not np.any((response > neuron["upper"]) & ~neuron["omega"]))
            objective = float(neuron["cost"] @ np.abs(u))
            status = "optimal" if within_gap(objective, bound, gap_allowed, self.absolute_gap) else unproven
            if within and status is not None:
                self.finalize(positions[j:j + 1], status, be.asarray(u[:, None]), np.array([bound]))
                solved[j] = True
        self.solved_on_supports += int(solved.sum())
        return solved


def host_programs(be, program, neurons: np.ndarray, inputs: int, tau: float) -> list[dict]:
    """The user's programs of the `neurons` (host indices into the device `program`) on the host, as
    support_ipm.solve_on_support takes them: float64, `inputs` weights each, Omega^c margin tau."""
    xp, index = be.xp, be.asarray(neurons)

    def rows(array):
        return be.to_host(xp.take(array, index, axis=0))

    Y, omega, eps = rows(program.Y), rows(program.omega), rows(program.eps)
    upper = np.zeros(Y.shape) + (program.upper if isinstance(program.upper, float) else rows(program.upper))
    cost = (np.ones((Y.shape[0], inputs)) if program.l1_weights is None
            else be.to_host(xp.take(program.l1_weights, index, axis=1)).T)
    return [dict(y=Y[j], omega=omega[j], upper=upper[j], eps=float(eps[j]), cost=cost[j], tau=tau)
            for j in range(len(neurons))]
