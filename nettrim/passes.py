"""One pass of a trim over its layers: each layer's program solved (with its budget search when it has a target
sparsity), its weights set, its report row and checkpoint written; layers in order (cascade, or parallel in this
process) or concurrently (parallel mode on an executor).

Weights are set and rows appended in the calling thread only, one layer at a time, so a pass stopped anywhere
(Ctrl-C, an error) leaves a model whose every layer is either trimmed and reported or original.
"""

from __future__ import annotations

import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from .checkpoint import Checkpoint
from .layers import Layer
from .plan import TrimPlan
from .programs import Solved, cascade_budget, layer_problem, layer_report, solve_layer
from .refit import refit_weights
from .report import LayerReport, Report
from .schedule import Scheduler
from .signals import TrimmedInput
from .target import smallest_budget, sparsity

#: How far above its target sparsity s a layer's budget search may stop: this share of the weights the target
#: keeps, 1 - s, and at most MAX_OVERSHOOT (at s = 0.7 a point, at s = 0.95 a quarter of a point).
KEPT_TOLERANCE, MAX_OVERSHOOT = 0.05, 0.01


#: The smallest g a budget search tries: a layer that reaches its target there keeps it (smaller budgets are
#: nearly equality constraints, which first-order solvers converge to ever more slowly).
SEARCH_FLOOR = 1e-3


def target_tolerance(target: float) -> float:
    """How far above `target` sparsity a layer's budget search may stop (KEPT_TOLERANCE)."""
    return min(MAX_OVERSHOOT, KEPT_TOLERANCE * (1 - target))


@dataclass
class Trimming:
    """What every pass of one trim shares: its plan, the layers, their original signals, their targets."""

    plan: TrimPlan
    order: list[Layer]                     # the selected layers, in execution order
    relu: set[str]                         # the layers followed by a ReLU
    original: dict[str, np.ndarray]        # the original network's input X of each layer
    weights: dict[str, np.ndarray]         # the original network's weight matrix W of each layer
    trimmed_input: TrimmedInput            # a layer's input in the model as trimmed so far (cascade)
    targets: dict[str, float | None]       # each layer's target sparsity (None: its budget as given)
    input_groups: dict[str, int] | None = None  # neuron trimming: rows of U per input of each layer

    @property
    def refit_in_loop(self) -> bool:
        """Refit each layer as it is trimmed, so that the next one is trimmed on refitted inputs: in cascade mode
        when the trim aims at sparsities. A trim that keeps budgets refits once every layer is trimmed
        (nettrim/refit.py): its later layers' budgets are the errors they inherit, which a refit would shrink."""
        return (self.plan.refit and self.plan.mode == "cascade"
                and any(target is not None for target in self.targets.values()))

    @property
    def refit_after(self) -> bool:
        """Refit every layer once they are all trimmed (the plan refits, not in the loop)."""
        return self.plan.refit and not self.refit_in_loop

    def run(self, report: Report, budgets: dict[str, float], scheduler: Scheduler, *,
            initial: dict[str, np.ndarray] | None = None, checkpoint: Checkpoint | None = None,
            keep_signals: bool = True) -> dict[str, np.ndarray]:
        """Trim every layer not yet in `report` with the relative budgets `budgets` (`initial` warm starts
        them): set its weights, append its row, add it to `checkpoint`. Returns the weights set, by layer."""
        bars = self.plan.progress and sys.stderr.isatty()  # to a file or pipe: one line per layer, not bars
        done_names = {row.name for row in report.layers}
        todo = [(index, layer) for index, layer in enumerate(self.order) if layer.name not in done_names]
        with tqdm(total=len(self.order), initial=len(done_names), desc="nettrim", unit="layer",
                  disable=not bars) as bar:
            record = Recorder(report, len(self.order), checkpoint, bar, self.plan.progress and not bars)
            try:
                if self.plan.mode == "parallel" and scheduler.remote:  # independent layers, solved concurrently
                    self._concurrently(todo, budgets, scheduler, initial or {}, record)
                else:
                    self._in_order(todo, budgets, scheduler, initial or {}, record, bars, keep_signals)
            finally:
                self.sort(report)  # rows resumed or solved concurrently are in the order their layers finished
        return record.solutions

    def _in_order(self, todo, budgets, scheduler, initial, record: Recorder, bars: bool, keep_signals: bool) -> None:
        """Each layer of `todo` in turn, on its original input or (cascade) the trimmed network's."""
        for index, layer in todo:
            record.bar.set_postfix_str(layer.name)
            captured = time.perf_counter()
            cascaded = self.plan.mode == "cascade" and index > 0
            X = self.trimmed_input(layer) if cascaded else self.original[layer.name]
            captured = time.perf_counter() - captured
            row, U = self.layer(index, layer, X, budgets[layer.name], scheduler, bars, initial.get(layer.name))
            row.capture_seconds = captured
            record(layer, row, U)
            if not keep_signals:
                del self.original[layer.name]

    def _concurrently(self, todo, budgets, scheduler, initial, record: Recorder) -> None:
        """The layers of `todo` on their original inputs, one thread each submitting to the scheduler; each
        recorded in this thread as it finishes."""
        with ThreadPoolExecutor(max(len(todo), 1), thread_name_prefix="nettrim-layer") as threads:
            futures = {threads.submit(self.layer, index, layer, self.original[layer.name], budgets[layer.name],
                                      scheduler, False, initial.get(layer.name)): layer for index, layer in todo}
            try:
                for future in as_completed(futures):
                    record(futures[future], *future.result())
            except BaseException:
                scheduler.close(abort=True)  # the other layers' tasks stop too, before the threads join
                raise

    def sort(self, report: Report) -> None:
        """Put the report's rows in the network's order."""
        position = {layer.name: index for index, layer in enumerate(self.order)}
        report.layers.sort(key=lambda row: position[row.name])

    def layer(self, index: int, layer: Layer, X: np.ndarray, g: float, scheduler: Scheduler, show: bool,
              initial: np.ndarray | None) -> tuple[LayerReport, np.ndarray]:
        """Solve one layer (its budget search when it has a target sparsity): its row and the weights to set.

        With refit_in_loop, the layer's solved weights are fitted again on X before they are set, so that the
        next layer's input is already refitted; and a layer with a target starts from its original weights fitted
        again to the trimmed input X (refit_weights on their own support: the best the dense layer can do
        there), so that the error it inherits is only what no weights on that support remove, and its sparsity
        comes from its own budget search."""
        start = time.perf_counter()
        target, note = self.targets[layer.name], ""
        g, factor = cascade_budget(self.plan, index, len(self.order), target, g)
        program = LayerPrograms.of(self, layer, X, factor, scheduler, show, initial)
        if target is None:
            solved = program.solve(g)
        else:
            search = smallest_budget(target, program.solve, g_low=SEARCH_FLOOR, g_first=g,
                                     g_max=self.plan.max_epsilon, close_enough=target_tolerance(target),
                                     measure=program.sparsity, stop=program.out_of_time)
            g, solved, note = search.g, search.outcome, _search_note(layer, search, program.sparsity, target)
        scheduler.release(program.X)
        row, U = layer_report(layer, solved, g, target, note), solved.U
        if self.refit_in_loop:
            U, before, after = refit_weights(layer, program.Z, U, program.X, layer.name in self.relu)
            row.refit_error = [before, after]
        row.seconds = time.perf_counter() - start
        return row, U


class Recorder:
    """A pass's bookkeeping for each solved layer: its weights set, its row appended, its checkpoint entry, its
    progress shown (the bar, or one line per layer when `lines`); `solutions` the weights set, by layer."""

    def __init__(self, report: Report, layers: int, checkpoint: Checkpoint | None, bar, lines: bool):
        self.report, self.layers, self.checkpoint, self.bar, self.lines = report, layers, checkpoint, bar, lines
        self.solutions: dict[str, np.ndarray] = {}

    def __call__(self, layer: Layer, row: LayerReport, U: np.ndarray) -> None:
        layer.set_weight_matrix(U)
        self.report.layers.append(row)
        self.solutions[layer.name] = U
        if self.checkpoint is not None:
            self.checkpoint.add(row, U)
        self.bar.update()
        if self.lines:
            print(f"nettrim: layer {row.name!r} ({len(self.report.layers)} of {self.layers}): {row.kept:.1%} "
                  f"kept, {row.status}, {row.seconds:.1f} s", file=sys.stderr, flush=True)


@dataclass
class LayerPrograms:
    """One layer's programs at any budget g: its input X (float64, one array for every program of the layer, so
    what depends on X alone is computed once: solvers/memo.py), target Y, the weights W it starts from, and how
    they are solved, within the layer's time."""

    trimming: Trimming
    layer: Layer
    X: np.ndarray
    Z: np.ndarray                 # the original layer's pre-activation on its original input
    Y: np.ndarray                 # the program's target: Z, or relu(Z) for Net-Trim's relu program
    W: np.ndarray
    activation: str
    factor: float | None          # the cascade's factor on the inherited error (programs.cascade_budget)
    scheduler: Scheduler
    show: bool
    initial: np.ndarray | None
    deadline: float | None

    @classmethod
    def of(cls, trimming: Trimming, layer: Layer, X, factor: float | None, scheduler: Scheduler, show: bool,
           initial) -> LayerPrograms:
        """The programs of trimming's layer `layer` on input X; with refit_in_loop and a target, W is the original
        weights refitted to a trimmed X (Trimming.layer)."""
        plan, relu = trimming.plan, layer.name in trimming.relu
        activation = "relu" if relu and plan.relu_program == "relu" else "linear"
        W, original = layer.weight_matrix(), trimming.original[layer.name]
        Z = layer.response(W, original)
        Y = np.maximum(Z, 0.0) if activation == "relu" else Z
        if trimming.refit_in_loop and trimming.targets[layer.name] is not None and X is not original:
            W = refit_weights(layer, Z, W, X, relu)[0]
        deadline = None if plan.time_limit is None else time.perf_counter() + plan.time_limit
        return cls(trimming, layer, np.asarray(X, dtype=np.float64), Z, Y, W, activation, factor, scheduler, show,
                   initial, deadline)

    def solve(self, g: float, closest: Solved | None = None) -> Solved:
        """The layer's program at budget g, warm started from `closest` (the budget search's closest solve) or
        the initial weights, stopped by the layer's deadline (its budget search and rounds share its time)."""
        trimming, plan = self.trimming, self.trimming.plan
        groups = None if trimming.input_groups is None else trimming.input_groups[self.layer.name]
        problem = layer_problem(self.layer, self.X, self.Y, self.W, self.activation, plan.budget, g, self.factor,
                                groups)
        start = self.initial if closest is None else closest.U
        return solve_layer(self.layer, problem, self.scheduler, plan.backend, plan.solve_options, plan.reweight,
                           self.show, start, self.deadline)

    def out_of_time(self) -> bool:
        """Is the layer's time (the plan's time_limit) spent?"""
        return self.deadline is not None and time.perf_counter() > self.deadline

    def sparsity(self, solved: Solved) -> float:
        """The share of zeros in the solved weights, the bias row apart."""
        return sparsity(solved.U[:self.W.shape[0] - self.layer.has_bias])


def _search_note(layer: Layer, search, measure, target: float) -> str:
    """The report's note on a layer's budget search; a warning when it did not reach the target."""
    solves = len(search.evaluations)
    if search.reached:
        stopped = ", stopped by the time limit" if search.stopped else ""
        return f"g = {search.g:.4g} for target sparsity {target:g} ({solves} solves{stopped})"
    if search.stopped:
        note = (f"target sparsity {target:g} not reached within the time limit: {measure(search.outcome):.4f} at "
                f"g = {search.g:.4g} after {solves} solves")
    else:
        note = (f"target sparsity {target:g} not reached: {measure(search.outcome):.4f} at g = max_epsilon = "
                f"{search.g:g}")
    warnings.warn(f"layer {layer.name!r}: {note}", UserWarning, stacklevel=6)
    return note
