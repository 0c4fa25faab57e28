"""Trim a whole torch model, layer by layer, in parallel or cascade mode (NETTRIM.md section 2).

For layer l with trained weights W (N x M), the signals X^{l-1} entering it and X^l = act(W^T X^{l-1}):

    parallel:  U = argmin ||U||_1  s.t.  ||(U^T X^{l-1} - X^l)_Omega|| <= eps_l,  (U^T X^{l-1})_{Omega^c} <= 0,
               eps_l = g_l ||X^l||_F; every layer sees the ORIGINAL network's signals, so layers are
               independent and the output error is at most sum_l eps_l prod_{j>l} ||U_j||_2.
    cascade:   layers in order; the input is the TRIMMED network's signal Xhat^{l-1}, the target is still the
               original X^l (Omega from it) and V = W^T Xhat^{l-1} on Omega^c, so W stays feasible. The first
               trimmed layer gets eps_1 = g ||X^1||_F; every later one the error it inherits, scaled by gamma:
               eps_l^2 = gamma ||(W^T Xhat^{l-1} - X^l)_Omega||_F^2 (kappa instead of gamma for the last one).
               Then ||Xhat^L - X^L||_F <= eps_1 prod_{l>=2} sqrt(gamma_l) ||W_l||_2.

With budget="neuron" (the default) each neuron m gets its share, eps_m = g ||x^l_m|| (or the cascade rule
per row), which keeps the layer within the same Frobenius budget and makes the neurons independent
programs; budget="layer" is the paper's single coupled budget.

A neuron whose solved weights miss their budget (the solver stopped unconverged, or the budget is
infeasible) keeps its original weights, so every trimmed layer keeps Proposition 1's promise (the report
counts these neurons as "dense").
"""

from __future__ import annotations

import copy
import re
import sys
import time
import warnings
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

import solvers
from solvers import LayerProblem

from .graph import LayerGraph, fold_batchnorm, trace_layers
from .layers import Layer, select_layers, untrimmed_layers
from .report import LayerReport, Report
from .schedule import Scheduler, check_scheduling
from .signals import DEFAULT_BATCH_SIZE, calibration_batches, capture
from .target import smallest_budget, sparsity

MODES = ("cascade", "parallel")
BUDGETS = ("neuron", "layer")
DEFAULT_EPSILON = 0.05
#: Solver options used unless solver_options says otherwise: float32 iterations (the returned weights are
#: still measured exactly in float64 against their budget).
DEFAULT_ADMM_OPTIONS = {"dtype": "float32"}
_FIT_RTOL, _VIOLATION_TOL = 1e-3, 1e-5  # the tolerances of the solver tests: fit <= eps (1 + 1e-3)


def trim(model: nn.Module, calibration, *, epsilon: float | Mapping[str, float] = DEFAULT_EPSILON,
         mode: str = "cascade", backend: str = "admm", device="cpu", inplace: bool = False,
         progress: bool = True, layers=None, exclude=None, relu_layers=None, budget: str = "neuron",
         gamma: float = 1.1, kappa: float | None = None, reweight: int = 0,
         target_sparsity: float | Mapping[str, float] | None = None, max_epsilon: float = 0.5,
         max_samples: int | None = 20_000, seed: int = 0, batch_size: int = DEFAULT_BATCH_SIZE,
         solver_options: Mapping | None = None, executor=None, workers: int | None = None,
         block_size: int | None = None) -> tuple[nn.Module, Report]:
    """Replace the weights of `model`'s nn.Linear and nn.Conv2d layers by Net-Trim's sparse weights.

    calibration: an input tensor (split into batches of `batch_size`) or an iterable of batches x or (x, y).
    epsilon:     the relative budget g (eps = g ||Y||_F of the layer), or a mapping of layer name or regex
                 (full match) to g: an exact name wins over a regex, then the first matching regex; layers no
                 key matches use 0.05. In cascade mode g only sets the first trimmed layer's budget.
    mode:        "cascade" or "parallel" (see the module docstring); gamma and kappa are cascade factors.
    backend:     "admm" or "cvxpy"; solver_options go to solvers.solve. device (admm): "cpu", "cuda" or
                 "cuda:K" (CuPy when installed, otherwise torch), a torch.device, or an array API device.
    layers, exclude: module types, names or regexes selecting the layers (default: every Linear and Conv2d).
    relu_layers: names of the layers whose output goes straight into a ReLU, for models torch.fx cannot
                 trace, TorchScript ones included (BatchNorm is then not folded); by default this is read from
                 the fx graph.
    budget:      "neuron" (independent per-neuron budgets) or "layer" (one coupled Frobenius budget).
    reweight:    K rounds of reweighted l1 per layer after the plain solve (0 = plain Net-Trim): sparser
                 weights toward the zero norm, within the same budgets (solvers/reweight.py).
    target_sparsity: a fraction of zero weights each layer must reach (a mapping of name or regex to a
                 fraction sets it per layer; unmatched layers then have none): the layer's g is the smallest
                 budget in [its g, max_epsilon] that reaches it, found by bisection with warm starts
                 (nettrim/target.py), and reported; a layer that cannot reach it within max_epsilon keeps the
                 max_epsilon solution, and a warning and the report say so. In cascade mode g adds
                 (g ||Y||)^2 to the inherited eps_l^2 of the later layers.
    max_samples: per-layer sample budget P (seeded subsample; conv layers have one sample per position).
    executor, workers, block_size: where the layer programs are solved (nettrim/schedule.py): by default in
                 this process; workers=N on a local pool of N processes; executor= any concurrent.futures
                 executor or a dask.distributed Client. Each layer is split into blocks of neurons (block_size
                 per task), and in parallel mode the layers are solved concurrently. With the same block_size
                 and BLAS thread count the result equals the in-process one; where the thread counts differ,
                 float32 rounding can move single neurons (README, benchmarks/scaling.py).

    Returns (trimmed model, Report). The caller's model is modified only with inplace=True, and only once
    every layer has been trimmed: an error or Ctrl-C leaves it as it was.
    """
    start = time.perf_counter()
    _check_options(mode, backend, budget, gamma, kappa, max_samples)
    if isinstance(reweight, bool) or not isinstance(reweight, int) or reweight < 0:
        raise ValueError(f"reweight must be an int >= 0 (rounds of reweighted l1), got {reweight!r}")
    solve_options = _solver_options(backend, device, solver_options)
    check_scheduling(executor, workers, block_size)
    if not np.isfinite(max_epsilon) or not 0 < max_epsilon <= 1:
        raise ValueError(f"max_epsilon must be a number in (0, 1] (at g = 1 zero weights keep every budget), got "
                         f"{max_epsilon!r}")
    batches = calibration_batches(calibration, batch_size)
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch nn.Module, got {type(model).__name__}")
    if any(parameter.is_meta for parameter in model.parameters()):
        raise ValueError("model: its parameters are on the meta device and hold no values; materialize them first "
                         "(model.to_empty(device='cpu'), then load_state_dict)")
    try:
        work = copy.deepcopy(model).eval()
    except Exception as error:
        raise ValueError(f"model: cannot be copied with copy.deepcopy ({error})") from error

    selected = select_layers(work, layers, exclude)
    graph = _layer_graph(work, selected, relu_layers)
    budgets = _per_layer("epsilon", epsilon, selected, DEFAULT_EPSILON, upper=1.0)
    targets = (_per_layer("target_sparsity", target_sparsity, selected, None, upper=1.0)
               if target_sparsity is not None else dict.fromkeys(budgets))
    fold_batchnorm(work, graph.batchnorm)

    positions = {layer.name: index for index, layer in enumerate(selected)}
    original = capture(work, batches, selected, positions, max_samples, seed)
    by_name = {layer.name: layer for layer in selected}
    order = [by_name[name] for name in original]  # execution order
    if mode == "cascade":
        _check_cascade_overrides(epsilon, order)

    report = Report(mode=mode, backend=backend, folded_batchnorm=dict(graph.batchnorm), reweight=reweight,
                    not_trimmed=untrimmed_layers(work))
    if report.not_trimmed:
        warnings.warn(f"nettrim leaves these layers as they are: {report.not_trimmed}", stacklevel=2)

    def trim_layer(index: int, layer: Layer, X: np.ndarray, scheduler: Scheduler, show: bool) -> LayerReport:
        """Solve one layer (its budget search when it has a target sparsity) and set its weights."""
        activation = "relu" if layer.name in graph.relu else "linear"
        W = layer.weight_matrix()
        Y = W.T @ original[layer.name]
        if activation == "relu":
            Y = np.maximum(Y, 0.0)
        g, factor = budgets[layer.name], None
        if mode == "cascade" and index > 0:
            g, factor = 0.0, kappa if (kappa is not None and index == len(order) - 1) else gamma

        def solve_at(g, closest: _Solved | None):
            problem = _layer_problem(X, Y, W, activation, budget, g, factor)
            return _solve_layer(layer, problem, scheduler, backend, solve_options, reweight, show,
                                None if closest is None else closest.U)

        target, note = targets[layer.name], ""
        if target is None:
            solved = solve_at(g, None)
        else:
            def weights_of(solved: _Solved) -> np.ndarray:  # the bias row apart
                return solved.U[:W.shape[0] - layer.has_bias]

            search = smallest_budget(target, solve_at, g_low=0.0, g_first=g, g_max=max_epsilon,
                                     measure=lambda solved: sparsity(weights_of(solved)))
            g, solved = search.g, search.outcome
            note = f"g = {g:.4g} for target sparsity {target:g} ({len(search.evaluations)} solves)"
            if not search.reached:
                note = (f"target sparsity {target:g} not reached: {sparsity(weights_of(solved)):.4f} at "
                        f"g = max_epsilon = {g:g}")
                warnings.warn(f"layer {layer.name!r}: {note}", UserWarning, stacklevel=3)
        scheduler.release(X)
        layer.set_weight_matrix(solved.U)
        return _layer_report(layer, solved, g, target, note)

    bars = progress and sys.stderr.isatty()  # to a file or pipe, one line per layer instead of redrawn bars

    def done(row: LayerReport) -> None:
        layer_bar.update()
        if progress and not bars:
            print(f"nettrim: layer {row.name!r} ({len(report.layers)} of {len(order)}): {row.kept:.1%} kept, "
                  f"{row.status}, {row.seconds:.1f} s", file=sys.stderr, flush=True)

    with (Scheduler(executor, workers, block_size) as scheduler,
          tqdm(total=len(order), desc="nettrim", unit="layer", disable=not bars) as layer_bar):
        if mode == "parallel" and scheduler.remote:  # independent layers, solved concurrently
            with ThreadPoolExecutor(len(order), thread_name_prefix="nettrim-layer") as threads:
                futures = [threads.submit(trim_layer, index, layer, original[layer.name], scheduler, False)
                           for index, layer in enumerate(order)]
                try:
                    for future in as_completed(futures):
                        report.layers.append(future.result())
                        done(report.layers[-1])
                except BaseException:
                    scheduler.close(abort=True)  # the other layers' tasks stop too, before the threads are joined
                    raise
                report.layers[:] = [future.result() for future in futures]  # in the network's order
        else:
            for index, layer in enumerate(order):
                layer_bar.set_postfix_str(layer.name)
                X = original[layer.name]
                if mode == "cascade" and index > 0:
                    X = capture(work, batches, [layer], positions, max_samples, seed)[layer.name]
                report.layers.append(trim_layer(index, layer, X, scheduler, bars))
                del original[layer.name]
                done(report.layers[-1])

    fallbacks = report.dense_fallback_warning()
    if fallbacks:
        warnings.warn(fallbacks, UserWarning, stacklevel=2)
    work.train(model.training)
    if inplace:
        _commit(model, work, order, graph.batchnorm)
        work = model
    report.seconds = time.perf_counter() - start
    return work, report


def _check_options(mode, backend, budget, gamma, kappa, max_samples) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if backend not in solvers.BACKENDS:
        raise ValueError(f"backend must be one of {solvers.BACKENDS}, got {backend!r}")
    if budget not in BUDGETS:
        raise ValueError(f"budget must be one of {BUDGETS}, got {budget!r}")
    if not np.isfinite(gamma) or gamma < 1:
        raise ValueError(f"gamma must be a finite number >= 1 (the cascade's slack factor), got {gamma}")
    if kappa is not None and (not np.isfinite(kappa) or kappa <= 0):
        raise ValueError(f"kappa must be a positive number (the last layer's factor), got {kappa}")
    if max_samples is not None and (not isinstance(max_samples, int) or max_samples < 1):
        raise ValueError(f"max_samples must be a positive int or None, got {max_samples!r}")


def _solver_options(backend: str, device, solver_options) -> dict:
    if backend == "cvxpy":
        if device != "cpu":
            raise ValueError("device: the cvxpy backend runs on the CPU only (device='cuda' needs backend='admm')")
        return dict(solver_options or {})
    solvers.backend(device)  # a device that is not one, or a GPU that is not there, is refused before any work
    return {**DEFAULT_ADMM_OPTIONS, "device": device, **(solver_options or {})}


def _layer_graph(model: nn.Module, selected: list[Layer], relu_layers) -> LayerGraph:
    names = [layer.name for layer in selected]
    if relu_layers is None:
        if isinstance(model, torch.jit.ScriptModule):
            raise ValueError("model: a TorchScript module, which torch.fx cannot trace. Name the layers whose "
                             "output goes straight into a ReLU with relu_layers=[...] (CLI: --relu-layers), or "
                             "relu_layers=[] if none; the others are trimmed with the linear program (BatchNorm "
                             "is not folded in TorchScript modules)")
        return trace_layers(model, names)
    relu = {relu_layers} if isinstance(relu_layers, str) else set(relu_layers)
    unknown = relu - set(names)
    if unknown:
        raise ValueError(f"relu_layers: {sorted(unknown)} are not among the selected layers {names}")
    return LayerGraph(relu=relu)


def _per_layer(argument: str, value, selected: list[Layer], default, upper: float | None) -> dict:
    """A number per layer from a number or a mapping of layer name or regex (full match) to numbers: an exact
    name wins over a regex, then the first matching regex, then `default`. Numbers must be >= 0 (and
    <= upper); a key that matches no selected layer is an error."""
    def checked(key, number):
        if (isinstance(number, bool) or not isinstance(number, int | float) or not np.isfinite(number)
                or number < 0 or (upper is not None and number > upper)):
            bounds = ">= 0" if upper is None else f"in [0, {upper:g}]"
            raise ValueError(f"{argument}: the value for {key!r} must be a number {bounds}, got {number!r}")
        return float(number)

    names = [layer.name for layer in selected]
    if not isinstance(value, Mapping):
        number = checked("every layer", value)
        return dict.fromkeys(names, number)
    patterns = {}
    for key, number in value.items():
        try:
            patterns[key] = (re.compile(key), checked(key, number))
        except (re.error, TypeError):
            raise ValueError(f"{argument}: {key!r} is not a layer name or a valid regex") from None
    for key, (pattern, _) in patterns.items():
        if not any(name == key or pattern.fullmatch(name) for name in names):
            raise ValueError(f"{argument}: {key!r} matches no selected layer (the selected layers: {names})")
    resolved = {}
    for name in names:
        if name in patterns:
            resolved[name] = patterns[name][1]
            continue
        resolved[name] = next((number for pattern, number in patterns.values() if pattern.fullmatch(name)), default)
    return resolved


def _check_cascade_overrides(epsilon, order: list[Layer]) -> None:
    """In cascade mode only the first layer's g is used; a key that only names later layers would be ignored."""
    if not isinstance(epsilon, Mapping):
        return
    first = order[0].name
    for key in epsilon:
        if key != first and re.fullmatch(key, first) is None:
            raise ValueError(
                f"epsilon: {key!r} names layers after the first ({first!r}); in cascade mode their budgets are "
                "the error they inherit times gamma (kappa for the last layer), so set those, or use "
                "mode='parallel' for per-layer budgets")


def _layer_problem(X, Y, W, activation, budget, g, cascade_factor) -> LayerProblem:
    """The layer program with eps^2 = (g ||Y||)^2, plus factor ||(W^T X - Y)_Omega||^2 and V = W^T X for a
    cascade layer after the first (cascade_factor = gamma or kappa); per neuron or for the layer."""
    per_neuron = budget == "neuron"
    eps = np.asarray(solvers.relative_budget(Y, g, per_neuron=per_neuron))
    upper = None
    if cascade_factor is not None:
        response = W.T @ X
        omega = Y > 0 if activation == "relu" else np.ones(Y.shape, dtype=bool)
        inherited = np.linalg.norm(np.where(omega, response - Y, 0.0), axis=1 if per_neuron else None)
        eps = np.sqrt(eps**2 + cascade_factor * inherited**2)
        upper = response if activation == "relu" else None
    return LayerProblem(X, Y, eps if per_neuron else float(eps), activation=activation, upper=upper,
                        original_weights=W)


@dataclass
class _Solved:
    problem: LayerProblem
    result: solvers.LayerResult
    U: np.ndarray        # the result's U, with the original columns where it missed the budget or was denser
    dense_fallback: int
    sparser_original: int
    kept_solution: np.ndarray  # (M,) bools: the neurons whose solved weights were kept


def _solve_layer(layer: Layer, problem: LayerProblem, scheduler: Scheduler, backend: str, options: dict,
                 reweight: int, progress: bool, initial=None) -> _Solved:
    """Solve one layer program (plus `reweight` rounds of reweighted l1), keeping the original weights of
    neurons that miss their budget. `initial` warm starts the ADMM (budget search)."""
    def solve_once(program: LayerProblem, start) -> solvers.LayerResult:
        return scheduler.solve(program, backend, options, layer.name, initial if start is None else start, progress)

    try:
        result = (solve_once(problem, None) if reweight == 0
                  else solvers.solve_reweighted(problem, solve_once, reweight))
    except (MemoryError, solvers.MemoryLimitError) as error:
        N, P, _ = problem.shape
        advice = ("" if isinstance(error, solvers.MemoryLimitError) else
                  ". Lower max_samples, or set solver_options={'memory_limit': bytes} to what this machine can give")
        raise ValueError(f"layer {layer.name!r} ({N} inputs, P = {P} samples) does not fit in memory: "
                         f"{error or type(error).__name__}{advice}") from error
    W = problem.original_weights
    missed = ~problem.columns_within_budget(result.U, _FIT_RTOL, _VIOLATION_TOL)
    if problem.per_neuron:
        denser = np.count_nonzero(result.U, axis=0) > np.count_nonzero(W, axis=0)
    else:  # one budget for the layer: W replaces U whole or not at all
        denser = np.full(len(missed), np.count_nonzero(result.U) > np.count_nonzero(W))
    sparser = ~missed & denser & problem.columns_within_budget(W, _FIT_RTOL, _VIOLATION_TOL)
    U = np.where((missed | sparser)[None, :], W, result.U)  # W keeps the budget (kappa < 1 aside)
    return _Solved(problem, result, U, int(missed.sum()), int(sparser.sum()), ~(missed | sparser))


def _certified_gap(result: solvers.LayerResult, kept_solution: np.ndarray) -> float | None:
    """1 - bound / ||u||_1 over the neurons whose solved weights were kept (LayerReport.certified_gap): each
    neuron's proven lower bound (or the layer's) clipped to [0, its l1], so a false bound never makes it
    negative or above 1; None without a bound or without a kept solution."""
    bound = result.info.get("l1_lower_bound")
    if bound is None or not kept_solution.any():
        return None
    l1 = np.abs(result.U).sum(axis=0)
    bound = np.nan_to_num(np.asarray(bound, dtype=np.float64), nan=0.0)
    if bound.shape == l1.shape:
        l1, proven = l1[kept_solution], np.clip(bound, 0.0, l1)[kept_solution].sum()
    else:  # the layer's bound
        proven = min(max(float(bound.sum()), 0.0), l1.sum())
    return float(1.0 - proven / l1.sum()) if l1.sum() > 0 else 0.0


def _layer_report(layer: Layer, solved: _Solved, g: float, target: float | None, note: str) -> LayerReport:
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
        status=result.status, message=message, dense_fallback=solved.dense_fallback, g=g,
        target_sparsity=target, certified_gap=_certified_gap(result, solved.kept_solution), bias=layer.has_bias,
        bias_nonzeros_before=int(np.count_nonzero(W[weights:])), bias_nonzeros_after=int(np.count_nonzero(U[weights:])),
        sparser_original=solved.sparser_original)


def _commit(model: nn.Module, work: nn.Module, order: list[Layer], folded: dict[str, str]) -> None:
    """Copy the trimmed weights into the caller's modules (and drop folded BatchNorms): the last step of an
    inplace trim, after everything that can fail has run."""
    with torch.no_grad():
        for layer in order:
            target = model.get_submodule(layer.name)
            target.weight.copy_(layer.module.weight)
            if layer.module.bias is not None:
                if target.bias is None:
                    target.bias = nn.Parameter(layer.module.bias.detach().clone())
                else:
                    target.bias.copy_(layer.module.bias)
    for bn_name in folded.values():
        model.set_submodule(bn_name, nn.Identity())
