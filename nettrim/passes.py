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
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from .checkpoint import Checkpoint
from .layers import Layer
from .programs import Solved, layer_problem, layer_report, solve_layer
from .refit import refit_weights
from .report import LayerReport, Report
from .schedule import Scheduler
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
    """What every pass of one trim shares: the layers, their original signals, and how they are solved."""

    order: list[Layer]                     # the selected layers, in execution order
    relu: set[str]                         # the layers followed by a ReLU
    original: dict[str, np.ndarray]        # the original network's input X of each layer
    trimmed_input: Callable[[Layer], np.ndarray]  # a layer's input in the model as trimmed so far (cascade)
    mode: str
    budget: str
    gamma: float
    kappa: float | None
    backend: str
    solve_options: dict
    reweight: int
    targets: dict[str, float | None]
    max_epsilon: float
    time_limit: float | None
    input_groups: dict[str, int] | None = None  # neuron trimming: rows of U per input of each layer
    refit: bool = False                    # fit the kept weights again (refit_in_loop: layer by layer)
    relu_program: str = "relu"             # "pre-activation": a relu layer's pre-activation kept within the budget

    @property
    def refit_in_loop(self) -> bool:
        """Refit each layer as it is trimmed, so that the next one is trimmed on refitted inputs: in cascade mode
        when the trim aims at sparsities. A trim that keeps budgets refits once every layer is trimmed
        (nettrim/refit.py): its later layers' budgets are the errors they inherit, which a refit would shrink."""
        return self.refit and self.mode == "cascade" and any(target is not None for target in self.targets.values())

    def run(self, report: Report, budgets: dict[str, float], scheduler: Scheduler, *, progress: bool,
            initial: dict[str, np.ndarray] | None = None, checkpoint: Checkpoint | None = None,
            keep_signals: bool = True) -> dict[str, np.ndarray]:
        """Trim every layer not yet in `report` with the relative budgets `budgets` (`initial` warm starts
        them): set its weights, append its row, add it to `checkpoint`. Returns the weights set, by layer."""
        bars = progress and sys.stderr.isatty()  # to a file or pipe, one line per layer instead of redrawn bars
        done_names = {row.name for row in report.layers}
        todo = [(index, layer) for index, layer in enumerate(self.order) if layer.name not in done_names]
        solutions: dict[str, np.ndarray] = {}

        def done(layer: Layer, row: LayerReport, U: np.ndarray) -> None:
            layer.set_weight_matrix(U)
            report.layers.append(row)
            solutions[layer.name] = U
            if checkpoint is not None:
                checkpoint.add(row, U)
            layer_bar.update()
            if progress and not bars:
                print(f"nettrim: layer {row.name!r} ({len(report.layers)} of {len(self.order)}): {row.kept:.1%} "
                      f"kept, {row.status}, {row.seconds:.1f} s", file=sys.stderr, flush=True)

        def solve(index: int, layer: Layer, X: np.ndarray, show: bool) -> tuple[LayerReport, np.ndarray]:
            start = (initial or {}).get(layer.name)
            return self.layer(index, layer, X, budgets[layer.name], scheduler, show, start)

        with tqdm(total=len(self.order), initial=len(done_names), desc="nettrim", unit="layer",
                  disable=not bars) as layer_bar:
            if self.mode == "parallel" and scheduler.remote:  # independent layers, solved concurrently
                with ThreadPoolExecutor(max(len(todo), 1), thread_name_prefix="nettrim-layer") as threads:
                    futures = {threads.submit(solve, index, layer, self.original[layer.name], False): layer
                               for index, layer in todo}
                    try:
                        for future in as_completed(futures):
                            done(futures[future], *future.result())
                    except BaseException:
                        scheduler.close(abort=True)  # the other layers' tasks stop too, before the threads join
                        raise
                    finally:
                        self.sort(report)
                return solutions
            for index, layer in todo:
                layer_bar.set_postfix_str(layer.name)
                captured = time.perf_counter()
                cascaded = self.mode == "cascade" and index > 0
                X = self.trimmed_input(layer) if cascaded else self.original[layer.name]
                captured = time.perf_counter() - captured
                row, U = solve(index, layer, X, bars)
                row.capture_seconds = captured
                done(layer, row, U)
                if not keep_signals:
                    del self.original[layer.name]
        self.sort(report)  # rows resumed from a checkpoint are in the order their layers finished
        return solutions

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
        relu = layer.name in self.relu
        activation = "relu" if relu and self.relu_program == "relu" else "linear"
        W = layer.weight_matrix()
        Z = layer.response(W, self.original[layer.name])
        Y = np.maximum(Z, 0.0) if activation == "relu" else Z
        target, note = self.targets[layer.name], ""
        in_loop_refit = self.refit_in_loop
        if in_loop_refit and target is not None and X is not self.original[layer.name]:
            W = refit_weights(layer, Z, W, X, relu)[0]
        # One float64 X for every program of the layer (its budget search, its rounds): what depends on X alone
        # is computed once (solvers/memo.py), and the scheduler shares one X with its workers.
        X = np.asarray(X, dtype=np.float64)
        factor = None
        if self.mode == "cascade" and index > 0 and target is None:  # the inherited error alone, times a factor
            last = self.kappa is not None and index == len(self.order) - 1
            g, factor = 0.0, self.kappa if last else self.gamma
        elif self.mode == "cascade" and index > 0:  # the inherited error and the searched g (from g on)
            factor = 1.0
        deadline = None if self.time_limit is None else time.perf_counter() + self.time_limit

        def solve_at(g: float, closest: Solved | None) -> Solved:
            problem = layer_problem(layer, X, Y, W, activation, self.budget, g, factor,
                                    None if self.input_groups is None else self.input_groups[layer.name])
            start = initial if closest is None else closest.U
            return solve_layer(layer, problem, scheduler, self.backend, self.solve_options, self.reweight, show,
                               start, deadline)  # the layer's time, shared by its budget search and rounds

        def weights_of(solved: Solved) -> np.ndarray:  # the bias row apart
            return solved.U[:W.shape[0] - layer.has_bias]

        if target is None:
            solved = solve_at(g, None)
        else:
            search = smallest_budget(target, solve_at, g_low=SEARCH_FLOOR, g_first=g, g_max=self.max_epsilon,
                                     close_enough=target_tolerance(target),
                                     measure=lambda solved: sparsity(weights_of(solved)))
            g, solved = search.g, search.outcome
            note = f"g = {g:.4g} for target sparsity {target:g} ({len(search.evaluations)} solves)"
            if not search.reached:
                note = (f"target sparsity {target:g} not reached: {sparsity(weights_of(solved)):.4f} at "
                        f"g = max_epsilon = {g:g}")
                warnings.warn(f"layer {layer.name!r}: {note}", UserWarning, stacklevel=5)
        scheduler.release(X)
        row, U = layer_report(layer, solved, g, target, note), solved.U
        if in_loop_refit:
            U, before, after = refit_weights(layer, Z, U, X, relu)
            row.refit_error = [before, after]
        row.seconds = time.perf_counter() - start
        return row, U
