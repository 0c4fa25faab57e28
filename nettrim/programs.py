"""One layer of a trim: its Net-Trim program, its solve, and the report row of the weights kept.

The weights kept are the solver's, except for neurons (columns) whose solved weights miss their budget (not
converged, or infeasible): those keep their original weights, which keep it (trim.py's module docstring); and
neurons whose solution has more nonzeros than their original weights (l1 is not l0), which keep the sparser
original when it keeps the budget. So a trimmed layer keeps Proposition 1's promise and never gains nonzeros.

Neurons the ADMM leaves "inaccurate" (converged, but their l1 not proven within the gap tolerance, or missing the
budget) are solved again by interior point when they are few and small enough (solvers/crossover.py).

A grouped convolution is one program per group (solvers/grouped.py), solved one group after another; each
group's budget is the layer's rule applied to its own neurons (so the groups' budgets add up to the layer's).
Group programs with at most SMALL_PROGRAM_FEATURES inputs (a depthwise 3x3 conv's are 9 weights and a bias)
go to the interior-point reference (CVXPY + Clarabel at its default tolerances, 1e-8; at 1e-9 it can end
"optimal_inaccurate") whatever the backend: measured on 18 such programs (N = 8 to 10, P = 600 to 864, relu),
Clarabel solved each in 30 to 40 ms, where the ADMM took 20 to
more than 10,000 iterations (0.01 to 5 s; the slow ones are programs whose response is positive on few
samples, where no fixed rho rule measured was fast on all of them).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

import solvers
from solvers import LayerProblem, rowgroups
from solvers.crossover import finish_inaccurate
from solvers.grouped import GroupedProblem
from solvers.memo import per_array
from solvers.problem import column_l1
from solvers.result import merge_results

from .layers import Layer
from .report import LayerReport
from .schedule import Scheduler

FIT_RTOL, VIOLATION_TOL = 1e-3, 1e-5  # the tolerances of the solver tests: fit <= eps (1 + 1e-3)
#: The most a cascade layer's budget takes from the error it inherits, relative to ||Y|| (the W it starts from
#: may need more, and gets it): beyond it the inherited error would license emptying the layer.
INHERITED_CAP = 0.5
#: Where the cap gives way to W's own fit, it leaves W this fraction of it inside the budget (within the theorem's
#: sqrt(gamma) - 1): at exactly W's fit W sat on the boundary of every constraint at once (V = W^T X), a program
#: without an interior point, which the ADMM ran to max_iter and Clarabel ended "inaccurate" on (ResNet-20's
#: layer2.2.conv1, cascade g = 0.5: 51 s and 1 neuron at max_iter; with 1% inside, 9.7 s and none).
INHERITED_SLACK = 0.01
#: Group programs with at most this many inputs N (the bias row included) are solved by interior point.
SMALL_PROGRAM_FEATURES = 32


def cascade_budget(plan, index: int, layers: int, target: float | None, g: float) -> tuple[float, float | None]:
    """(g, cascade_factor) of layer `index` of `layers` for layer_problem. Parallel mode and a cascade's first
    layer: (g, None), the budget g ||Y|| alone. A later cascade layer inherits the error of the layers before it
    (Aghasi et al. 2020, Theorem 3): without a target its budget is that error times gamma (kappa for the last
    layer when given), (0, factor); with a target, the inherited error plus its searched g, (g, 1)."""
    if plan.mode != "cascade" or index == 0:
        return g, None
    if target is not None:
        return g, 1.0
    last = plan.kappa is not None and index == layers - 1
    return 0.0, plan.kappa if last else plan.gamma


def layer_problem(layer: Layer, X, Y, W, activation, budget, g, cascade_factor,
                  input_group: int | None = None) -> LayerProblem | GroupedProblem:
    """The layer program with eps^2 = (g ||Y||)^2, plus factor ||(W^T X - Y)_Omega||^2 (at most
    max((INHERITED_CAP ||Y||)^2, ((1 + INHERITED_SLACK) ||(W^T X - Y)_Omega||)^2)) and V = W^T X for a cascade
    layer after the first (cascade_factor = gamma or kappa); per neuron or for the layer (for each group of a
    grouped convolution).
    `input_group` (neuron trimming) makes the objective the rows' group norm over groups of that many rows, one
    per input of the layer (grouped convolutions keep l1)."""
    if layer.groups == 1:
        return _program(X, Y, W, activation, budget, g, cascade_factor, input_group)
    return GroupedProblem([_program(X_g, Y[columns], W[:, columns], activation, budget, g, cascade_factor)
                           for X_g, columns in zip(layer.group_inputs(X), layer.group_columns(), strict=True)])


def _program(X, Y, W, activation, budget, g, cascade_factor, input_group: int | None = None) -> LayerProblem:
    per_neuron = budget == "neuron"
    eps = np.asarray(solvers.relative_budget(Y, g, per_neuron=per_neuron))
    upper = None
    if cascade_factor is not None:
        # The error a layer inherits is its budget in the theorem; capped, so that a large inherited error never
        # licenses emptying the layer (the cap gives way only as far as W itself needs, with INHERITED_SLACK).
        response = response_of(W, X)
        omega = Y > 0 if activation == "relu" else np.ones(Y.shape, dtype=bool)
        inherited = np.linalg.norm(np.where(omega, response - Y, 0.0), axis=1 if per_neuron else None)
        cap = np.maximum(np.asarray(solvers.relative_budget(Y, INHERITED_CAP, per_neuron=per_neuron)),
                         (1 + INHERITED_SLACK) * inherited)
        eps = np.sqrt(eps**2 + np.minimum(cascade_factor * inherited**2, cap**2))
        upper = response if activation == "relu" else None
    rows = {} if input_group is None else {"structure": "rows", "group_size": input_group}
    return LayerProblem(X, Y, eps if per_neuron else float(eps), activation=activation, upper=upper,
                        original_weights=W, **rows)


@per_array
def response_of(W: np.ndarray, X: np.ndarray) -> np.ndarray:
    """W^T X, kept while W and X live (a budget search's programs share them: solvers/memo.py)."""
    return W.T @ X


@dataclass
class Solved:
    """A layer's solve: the solver's result and the weights kept (U)."""

    problem: LayerProblem | GroupedProblem
    result: solvers.LayerResult
    U: np.ndarray        # the result's U, with the original columns where it missed the budget or was denser
    missed: np.ndarray   # (M,) bools: the solved weights missed the budget (the original kept: dense fallback)
    sparser: np.ndarray  # (M,) bools: the original weights had fewer nonzeros (and were kept)

    @property
    def kept_solution(self) -> np.ndarray:
        """(M,) bools: the neurons whose solved weights were kept."""
        return ~(self.missed | self.sparser)


def solve_layer(layer: Layer, problem: LayerProblem | GroupedProblem, scheduler: Scheduler, backend: str,
                options: dict, reweight: int, progress: bool, initial=None, deadline: float | None = None) -> Solved:
    """Solve one layer program (plus `reweight` rounds of reweighted l1), keeping the original weights of
    neurons that miss their budget. `initial` warm starts the ADMM (budget search); each solve stops by
    `deadline` (time.perf_counter()), as at max_iter."""
    if isinstance(problem, GroupedProblem):
        return _solve_groups(layer, problem, scheduler, backend, options, reweight, progress, initial, deadline)

    def solve_once(program: LayerProblem, start) -> solvers.LayerResult:
        left = {} if deadline is None else {"time_limit": max(deadline - time.perf_counter(), 0.0)}
        result = scheduler.solve(program, backend, {**options, **left}, layer.name,
                                 initial if start is None else start, progress)
        if deadline is not None and time.perf_counter() > deadline:
            return result
        return finish_inaccurate(program, result)  # the ADMM's "inaccurate" neurons, by interior point

    try:
        result = (solve_once(problem, None) if reweight == 0 else solvers.solve_reweighted(
            problem, solve_once, reweight, stop=lambda: deadline is not None and time.perf_counter() > deadline))
    except (MemoryError, solvers.MemoryLimitError) as error:
        N, P, _ = problem.shape
        advice = ("" if isinstance(error, solvers.MemoryLimitError) else
                  ". Lower max_samples, or set solver_options={'memory_limit': bytes} to what this machine can give")
        raise ValueError(f"layer {layer.name!r} ({N} inputs, P = {P} samples) does not fit in memory: "
                         f"{error or type(error).__name__}{advice}") from error
    W = problem.original_weights
    missed = ~problem.result_within_budget(result, FIT_RTOL, VIOLATION_TOL)
    if problem.per_neuron:
        denser = np.count_nonzero(result.U, axis=0) > np.count_nonzero(W, axis=0)
    else:  # one budget for the layer: W replaces U whole or not at all
        denser = np.full(len(missed), np.count_nonzero(result.U) > np.count_nonzero(W))
    sparser = ~missed & denser
    if problem.rows:  # never for the rows' objective, whose aim is zero rows: the original's columns fill them
        sparser[:] = False
    if sparser.any():
        sparser &= problem.columns_within_budget(W, FIT_RTOL, VIOLATION_TOL)
    fallback = missed | sparser
    U = np.where(fallback[None, :], W, result.U) if fallback.any() else result.U  # W keeps the budget
    return Solved(problem, result, U, missed, sparser)


def _solve_groups(layer: Layer, problem: GroupedProblem, scheduler: Scheduler, backend: str, options: dict,
                  reweight: int, progress: bool, initial, deadline: float | None) -> Solved:
    """solve_layer for each group of a grouped convolution, one after another, as one Solved for the layer
    (small groups by interior point: module docstring)."""
    if problem.shape[0] <= SMALL_PROGRAM_FEATURES:
        backend, options = "cvxpy", {"accuracy": "default"}
    start, parts = time.perf_counter(), []
    for part, columns in tqdm(list(zip(problem.parts, problem.columns, strict=True)), desc=layer.name,
                              unit="group", leave=False, disable=not progress):
        start_weights = None if initial is None else initial[:, columns]
        parts.append(solve_layer(layer, part, scheduler, backend, options, reweight, False, start_weights, deadline))
        scheduler.release(part.X)
    result = merge_results(problem, problem.columns, [solved.result for solved in parts], time.perf_counter() - start)
    return Solved(problem, result, np.concatenate([solved.U for solved in parts], axis=1),
                  *(np.concatenate([getattr(solved, mask) for solved in parts]) for mask in ("missed", "sparser")))


def certified_gap(problem, result: solvers.LayerResult, kept_solution: np.ndarray) -> float | None:
    """1 - bound / ||u||_1 over the neurons whose solved weights were kept (LayerReport.certified_gap): each
    neuron's proven lower bound (or the layer's) clipped to [0, its l1], so a false bound never makes it
    negative or above 1 (for the rows' objective, the layer's bound against it); None without a bound or
    without a kept solution."""
    bound = result.info.get("l1_lower_bound")
    if bound is None or not kept_solution.any():
        return None
    if getattr(problem, "rows", False):  # the layer's bound on the rows' objective
        objective = problem.objective(result.U)
        return float(1.0 - min(max(float(bound), 0.0), objective) / objective) if objective > 0 else 0.0
    l1 = column_l1(result.U)
    bound = np.nan_to_num(np.asarray(bound, dtype=np.float64), nan=0.0)
    if bound.shape == l1.shape:
        l1, proven = l1[kept_solution], np.clip(bound, 0.0, l1)[kept_solution].sum()
    else:  # the layer's bound
        proven = min(max(float(bound.sum()), 0.0), l1.sum())
    return float(1.0 - proven / l1.sum()) if l1.sum() > 0 else 0.0


def layer_report(layer: Layer, solved: Solved, g: float, target: float | None, note: str) -> LayerReport:
    problem, result, U = solved.problem, solved.result, solved.U
    measures = problem.evaluate(U)
    eps = np.asarray(problem.eps, dtype=np.float64)
    fit = np.asarray(measures["fit"], dtype=np.float64)
    ratio = np.where(eps > 0, fit / np.maximum(eps, 1e-300), np.where(fit > 0, np.inf, 0.0))
    y_scale = max(float(np.max(np.abs(problem.Y))), 1e-300)
    N, P, M = problem.shape
    message = f"{result.message}; {note}" if note else result.message
    weights = N - layer.has_bias  # the bias is U's last row
    W = problem.original_weights
    return LayerReport(
        name=layer.name, kind=layer.kind, activation=problem.activation, shape=[N, M], samples=P,
        nonzeros_before=int(np.count_nonzero(W[:weights])), nonzeros_after=int(np.count_nonzero(U[:weights])),
        eps=problem.budget_total(), fit_ratio=float(np.max(ratio)),
        violation=measures["max_violation"] / y_scale, iterations=result.iterations, seconds=result.seconds,
        status=result.status, message=message, dense_fallback=int(solved.missed.sum()), g=g,
        target_sparsity=target, certified_gap=certified_gap(problem, result, solved.kept_solution),
        bias=layer.has_bias,
        bias_nonzeros_before=int(np.count_nonzero(W[weights:])), bias_nonzeros_after=int(np.count_nonzero(U[weights:])),
        sparser_original=int(solved.sparser.sum()), groups=layer.groups,
        inputs_unread=_inputs_unread(problem, U, layer.has_bias),
        neurons={status: int(count) for status, count in result.info.get("neuron_status", {}).items() if count}
        or None)


def _inputs_unread(problem, U: np.ndarray, has_bias: bool) -> int | None:
    """For the rows' objective, how many inputs of the layer (groups of rows, the bias row apart) it reads with
    zero weights only; else None."""
    if not getattr(problem, "rows", False):
        return None
    return int(np.sum(rowgroups.norms(np, U[:U.shape[0] - has_bias], problem.group_size) == 0))
