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
import time
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

import solvers
from solvers import LayerProblem

from .graph import LayerGraph, fold_batchnorm, trace_layers
from .layers import Layer, select_layers
from .report import LayerReport, Report
from .signals import DEFAULT_BATCH_SIZE, calibration_batches, capture

MODES = ("cascade", "parallel")
BUDGETS = ("neuron", "layer")
DEFAULT_EPSILON = 0.05
#: Solver options used unless solver_options says otherwise: float32 iterations (the returned weights are
#: still measured exactly in float64 against their budget).
DEFAULT_ADMM_OPTIONS = {"dtype": "float32"}
_FIT_RTOL, _VIOLATION_TOL = 1e-3, 1e-5  # the tolerances of the solver tests: fit <= eps (1 + 1e-3)


def trim(model: nn.Module, calibration, *, epsilon: float | Mapping[str, float] = DEFAULT_EPSILON,
         mode: str = "cascade", backend: str = "admm", device: str = "cpu", inplace: bool = False,
         progress: bool = True, layers=None, exclude=None, relu_layers=None, budget: str = "neuron",
         gamma: float = 1.1, kappa: float | None = None, reweight: int = 0, max_samples: int | None = 20_000,
         seed: int = 0, batch_size: int = DEFAULT_BATCH_SIZE,
         solver_options: Mapping | None = None) -> tuple[nn.Module, Report]:
    """Replace the weights of `model`'s nn.Linear and nn.Conv2d layers by Net-Trim's sparse weights.

    calibration: an input tensor (split into batches of `batch_size`) or an iterable of batches x or (x, y).
    epsilon:     the relative budget g (eps = g ||Y||_F of the layer), or a mapping of layer name or regex
                 (full match) to g: an exact name wins over a regex, then the first matching regex; layers no
                 key matches use 0.05. In cascade mode g only sets the first trimmed layer's budget.
    mode:        "cascade" or "parallel" (see the module docstring); gamma and kappa are cascade factors.
    backend:     "admm" (device "cpu" or "cuda") or "cvxpy"; solver_options go to solvers.solve.
    layers, exclude: module types, names or regexes selecting the layers (default: every Linear and Conv2d).
    relu_layers: names of the layers whose output goes straight into a ReLU, for models torch.fx cannot
                 trace, TorchScript ones included (BatchNorm is then not folded); by default this is read from
                 the fx graph.
    budget:      "neuron" (independent per-neuron budgets) or "layer" (one coupled Frobenius budget).
    reweight:    K rounds of reweighted l1 per layer after the plain solve (0 = plain Net-Trim): sparser
                 weights toward the zero norm, within the same budgets (solvers/reweight.py).
    max_samples: per-layer sample budget P (seeded subsample; conv layers have one sample per position).

    Returns (trimmed model, Report). The caller's model is modified only with inplace=True, and only once
    every layer has been trimmed: an error or Ctrl-C leaves it as it was.
    """
    start = time.perf_counter()
    _check_options(mode, backend, budget, gamma, kappa, max_samples)
    if isinstance(reweight, bool) or not isinstance(reweight, int) or reweight < 0:
        raise ValueError(f"reweight must be an int >= 0 (rounds of reweighted l1), got {reweight!r}")
    solve_options = {**_solver_options(backend, device, solver_options), "reweight": reweight}
    batches = calibration_batches(calibration, batch_size)
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch nn.Module, got {type(model).__name__}")
    try:
        work = copy.deepcopy(model).eval()
    except Exception as error:
        raise ValueError(f"model: cannot be copied with copy.deepcopy ({error})") from error

    selected = select_layers(work, layers, exclude)
    graph = _layer_graph(work, selected, relu_layers)
    budgets = _relative_budgets(epsilon, selected)
    fold_batchnorm(work, graph.batchnorm)

    positions = {layer.name: index for index, layer in enumerate(selected)}
    original = capture(work, batches, selected, positions, max_samples, seed)
    by_name = {layer.name: layer for layer in selected}
    order = [by_name[name] for name in original]  # execution order
    if mode == "cascade":
        _check_cascade_overrides(epsilon, order)

    report = Report(mode=mode, backend=backend, folded_batchnorm=dict(graph.batchnorm), reweight=reweight)
    with tqdm(total=len(order), desc="nettrim", unit="layer", disable=not progress) as layer_bar:
        for index, layer in enumerate(order):
            layer_bar.set_postfix_str(layer.name)
            activation = "relu" if layer.name in graph.relu else "linear"
            W = layer.weight_matrix()
            X = original.pop(layer.name)
            Y = W.T @ X
            if activation == "relu":
                Y = np.maximum(Y, 0.0)
            if mode == "cascade" and index > 0:
                X = capture(work, batches, [layer], positions, max_samples, seed)[layer.name]
                factor = kappa if (kappa is not None and index == len(order) - 1) else gamma
                problem = _cascade_problem(X, Y, W, activation, factor, budget)
            else:
                problem = _plain_problem(X, Y, W, activation, budgets[layer.name], budget)
            report.layers.append(_trim_layer(layer, problem, backend, solve_options, progress))
            layer_bar.update()

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


def _solver_options(backend: str, device: str, solver_options) -> dict:
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if backend == "cvxpy":
        if device != "cpu":
            raise ValueError("device: the cvxpy backend runs on the CPU only (device='cuda' needs backend='admm')")
        return dict(solver_options or {})
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


def _relative_budgets(epsilon, selected: list[Layer]) -> dict[str, float]:
    """g per layer: the scalar, or the mapping (exact name, then first matching regex, then the default)."""
    def checked(key, value):
        if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value) or value < 0:
            raise ValueError(f"epsilon: the relative budget for {key!r} must be a number >= 0, got {value!r}")
        return float(value)

    if not isinstance(epsilon, Mapping):
        g = checked("every layer", epsilon)
        return {layer.name: g for layer in selected}
    overrides = {}
    for key, value in epsilon.items():
        try:
            overrides[key] = (re.compile(key), checked(key, value))
        except (re.error, TypeError):
            raise ValueError(f"epsilon: {key!r} is not a layer name or a valid regex") from None
    names = [layer.name for layer in selected]
    for key, (pattern, _) in overrides.items():
        if not any(name == key or pattern.fullmatch(name) for name in names):
            raise ValueError(f"epsilon: {key!r} matches no selected layer (the selected layers: {names})")
    budgets = {}
    for name in names:
        if name in overrides:
            budgets[name] = overrides[name][1]
            continue
        budgets[name] = next((g for pattern, g in overrides.values() if pattern.fullmatch(name)), DEFAULT_EPSILON)
    return budgets


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


def _plain_problem(X, Y, W, activation, g, budget) -> LayerProblem:
    eps = solvers.relative_budget(Y, g, per_neuron=budget == "neuron")
    return LayerProblem(X, Y, eps, activation=activation, original_weights=W)


def _cascade_problem(X_hat, Y, W, activation, factor, budget) -> LayerProblem:
    """Cascade layer: target Y on the trimmed input, V = W^T Xhat, eps^2 = factor ||(W^T Xhat - Y)_Omega||^2."""
    response = W.T @ X_hat
    omega = Y > 0 if activation == "relu" else np.ones(Y.shape, dtype=bool)
    inherited = np.where(omega, response - Y, 0.0)
    if budget == "neuron":
        eps = np.sqrt(factor) * np.linalg.norm(inherited, axis=1)
    else:
        eps = float(np.sqrt(factor) * np.linalg.norm(inherited))
    upper = response if activation == "relu" else None
    return LayerProblem(X_hat, Y, eps, activation=activation, upper=upper, original_weights=W)


def _trim_layer(layer: Layer, problem: LayerProblem, backend: str, options: dict, progress: bool) -> LayerReport:
    """Solve one layer's program, keep the original weights of neurons that miss their budget, write U back."""
    options = dict(options)
    bar = None
    if progress and backend == "admm":
        bar = tqdm(total=options.get("max_iter", 10_000), desc=layer.name, unit="it", leave=False)

        def show(iteration, info):
            bar.update(iteration - bar.n)
            bar.set_postfix(active=info["active"], refresh=False)
            return False

        options["callback"] = show
    try:
        result = solvers.solve(problem, backend=backend, **options)
    finally:
        if bar is not None:
            bar.close()
    W = problem.original_weights
    missed = ~problem.columns_within_budget(result.U, _FIT_RTOL, _VIOLATION_TOL)
    U = np.where(missed[None, :], W, result.U)  # the original weights keep the budget (kappa < 1 aside)
    fallback = int(missed.sum())
    layer.set_weight_matrix(U)
    measures = problem.evaluate(U)
    eps = np.asarray(problem.eps, dtype=np.float64)
    fit = np.asarray(measures["fit"], dtype=np.float64)
    ratio = np.where(eps > 0, fit / np.maximum(eps, 1e-300), np.where(fit > 0, np.inf, 0.0))
    y_scale = max(float(np.max(np.abs(problem.Y))), 1e-300)
    N, P, M = problem.shape
    return LayerReport(
        name=layer.name, kind=layer.kind, activation=problem.activation, shape=[N, M], samples=P,
        nonzeros_before=int(np.count_nonzero(W)), nonzeros_after=int(np.count_nonzero(U)),
        eps=problem.budget_total(), fit_ratio=float(np.max(ratio)),
        violation=measures["max_violation"] / y_scale, iterations=result.iterations, seconds=result.seconds,
        status=result.status, message=result.message, dense_fallback=fallback)


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
