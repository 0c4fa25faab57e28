"""Trim a whole torch model, layer by layer, in parallel or cascade mode (Aghasi, Abdi, Nguyen and Romberg,
"Net-Trim", NIPS 2017; Aghasi, Abdi and Romberg, SIAM J. Math. Data Sci. 2020).

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
import sys
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from . import neurons
from .allocation import allocate
from .arguments import check_cascade_overrides, per_layer
from .checkpoint import Checkpoint, fingerprint
from .graph import LayerGraph, fold_batchnorm, trace_layers
from .layers import Layer, select_layers, untrimmed_layers
from .passes import Trimming
from .plan import TrimPlan
from .refit import refit_layers
from .report import Report
from .schedule import Scheduler
from .signals import DEFAULT_BATCH_SIZE, TrimmedInput, calibration_batches, capture
from .target import smallest_budget

#: The batch sizes of the CPU latency that neuron trimming reports.
LATENCY_BATCHES = (1, 256)
DEFAULT_EPSILON = 0.05
#: How close (in sparsity, above it) a model_sparsity search lands before it stops.
MODEL_SPARSITY_TOLERANCE = 0.005


class TrimInterrupted(KeyboardInterrupt):
    """Ctrl-C during a trim. `model` is a copy of the model with the layers trimmed so far (the others as they
    were), `report` their rows; the caller's model is untouched. With checkpoint=, the same call resumes."""

    def __init__(self, model: nn.Module, report: Report, checkpoint: Checkpoint | None):
        resume = (f"; they are kept in {checkpoint.folder}, and the same call resumes after them"
                  if checkpoint is not None else "")
        super().__init__(f"trim interrupted after {len(report.layers)} layers{resume}")
        self.model, self.report = model, report


def trim(model: nn.Module, calibration, *, epsilon: float | Mapping[str, float] = DEFAULT_EPSILON,
         mode: str = "cascade", backend: str = "admm", device="cpu", inplace: bool = False,
         progress: bool = True, layers=None, exclude=None, relu_layers=None, budget: str = "neuron",
         gamma: float = 1.1, kappa: float | None = None, reweight: int | None = None,
         target_sparsity: float | Mapping[str, float] | None = None, model_sparsity: float | None = None,
         max_epsilon: float = 1.0, max_samples: int | None = 20_000, seed: int = 0,
         batch_size: int = DEFAULT_BATCH_SIZE, max_iter: int | None = None, time_limit: float | None = None,
         checkpoint=None, solver_options: Mapping | None = None, executor=None, workers: int | None = None,
         block_size: int | None = None, structure: str = "weights", refit: bool | None = None,
         relu_program: str | None = None, gather_inputs: bool = False) -> tuple[nn.Module, Report]:
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
                 weights toward the zero norm, within the same budgets (solvers/reweight.py). None (the
                 default): 1 when the trim aims at a sparsity, 0 when it keeps budgets.
    target_sparsity: a fraction of zero weights each layer must reach (a mapping of name or regex to a
                 fraction sets it per layer; unmatched layers then have none): the layer's g is the smallest
                 budget in [its g, max_epsilon] that reaches it, found by a bracketing search with warm starts
                 (nettrim/target.py), and reported; a layer that cannot reach it within max_epsilon keeps the
                 max_epsilon solution, and a warning and the report say so. In cascade mode g adds
                 (g ||Y||)^2 to the inherited eps_l^2 of the later layers.
    model_sparsity: a fraction of zero weights for the model (the selected layers' weights together, biases
                 apart). structure="weights": each layer gets a share from one global threshold on its weights'
                 estimated error (optimal brain surgeon saliencies; nettrim/allocation.py) and reaches it by its
                 own budget search, in one pass. structure="neurons": every layer's g is scaled by one factor t,
                 the smallest whose smaller model (the weights that read a removed neuron gone with it) reaches
                 it, found by bisection over whole trims; whole neurons go at once, so it lands above the target
                 by up to what the last neurons removed weigh (report.model_sparsity["reached"]), or warns.
    max_samples: per-layer sample budget P (seeded subsample; conv layers have one sample per position).
    max_iter, time_limit: per layer, the ADMM's iterations and seconds (a budget search and reweighting rounds
                 share the layer's time); neurons not converged by then keep their original weights.
    checkpoint:  a folder where each layer is recorded as it is trimmed: a trim stopped by Ctrl-C (or a crash)
                 resumes after those layers when called again with the same model, calibration and settings.
    executor, workers, block_size: where the layer programs are solved (nettrim/schedule.py): by default in
                 this process; workers=N on a local pool of N processes; executor= any concurrent.futures
                 executor or a dask.distributed Client. Each layer is split into blocks of neurons (block_size
                 per task), and in parallel mode the layers are solved concurrently. With the same block_size
                 and BLAS thread count the result equals the in-process one; where the thread counts differ,
                 float32 rounding can move single neurons (docs/scale.md, benchmarks/scaling.py).

    structure:   "weights" (l1: scattered zeros, the model keeps its shapes) or "neurons": each layer's
                 objective is the group norm over its inputs (a neuron, or a conv channel's kh x kw weights),
                 and the neurons and channels that no layer reads any more are removed (nettrim/neurons.py):
                 the model returned is physically smaller, and the report gives the widths, parameters, FLOPs
                 and CPU latency (batch 1 and 256) before and after. Not with inplace=True. gather_inputs=True
                 also drops the inputs of the model that the first layer no longer reads (a Linear's features,
                 a conv's channels): that layer becomes a neurons.GatheredInputs, which selects the inputs it
                 reads (index_select) and multiplies them by its smaller weight (saved and loaded like the rest).
    refit:       fit each layer's kept weights again by least squares to the original layer's pre-activations
                 on the inputs the refitted layers before it produce (nettrim/refit.py): the zeros stay, each
                 neuron keeps whichever weights bring its output closer to the original's, and the report gives
                 each layer's measured output error before and after (the refitted weights are outside the
                 convex program: the budgets no longer bound them). In cascade mode with sparsity targets each
                 layer is refitted as it is trimmed (the next is trimmed on refitted inputs, and starts from its
                 dense weights refitted to them); otherwise once every layer is trimmed. None (the default): on
                 when the trim aims at a sparsity (target_sparsity or model_sparsity), off when it keeps budgets.
    relu_program: "relu" (Net-Trim's program: a ReLU layer's output within the budget, its zeros kept below 0)
                 or "pre-activation" (the layer's pre-activation within the budget, a linear program: it reaches
                 any sparsity, where the relu program of a 3 x 3 conv saturates). None: "pre-activation" when
                 the trim aims at a sparsity, "relu" otherwise.
    Returns (trimmed model, Report). The caller's model is modified only with inplace=True, and only once
    every layer has been trimmed: an error leaves it as it was, and Ctrl-C raises TrimInterrupted, which
    holds the layers trimmed so far.
    """
    arguments = {name: value for name, value in locals().items() if name not in ("model", "calibration")}
    start = time.perf_counter()
    plan = TrimPlan.of(**arguments)
    batches = calibration_batches(calibration, plan.batch_size)
    work = _working_copy(model)
    trimming, budgets, report, folded = _prepared(work, batches, plan)
    store = None
    if plan.checkpoint is not None:
        key = fingerprint(plan.fingerprinted(budgets, trimming.targets, trimming.relu), _model_state(work),
                          [trimming.original[layer.name] for layer in trimming.order])
        store = Checkpoint(plan.checkpoint, key)
        _resume(store, trimming.order, report, plan.progress)
    try:
        with Scheduler(plan.executor, plan.workers, plan.block_size) as scheduler:
            report = _trimmed(trimming, report, budgets, scheduler, store)
    except KeyboardInterrupt as interrupt:
        work.train(model.training)
        raise TrimInterrupted(work, report, store) from interrupt
    _finish(model, work, trimming, report, folded, batches[0])
    report.seconds = time.perf_counter() - start
    return (model if plan.inplace else work), report


def _prepared(work: nn.Module, batches: list[torch.Tensor], plan: TrimPlan) -> tuple[Trimming, dict, Report, dict]:
    """The trim of `work` (a copy of the caller's model) under `plan`: its layers selected, BatchNorm folded, the
    original signals captured. Returns the Trimming, each layer's g, the report to fill (the layers left as they
    are named, with a warning) and the BatchNorms folded ({layer: batchnorm})."""
    selected = select_layers(work, plan.layers, plan.exclude)
    graph = _layer_graph(work, selected, plan.relu_layers)
    budgets = per_layer("epsilon", plan.epsilon, selected, DEFAULT_EPSILON, upper=1.0)
    targets = (per_layer("target_sparsity", plan.target_sparsity, selected, None, upper=1.0)
               if plan.target_sparsity is not None else dict.fromkeys(budgets))
    fold_batchnorm(work, graph.batchnorm)
    input_groups = (neurons.input_group_sizes(work, selected, batches[0]) if plan.structure == "neurons" else None)
    positions = {layer.name: index for index, layer in enumerate(selected)}
    original = capture(work, batches, selected, positions, plan.max_samples, plan.seed)
    by_name = {layer.name: layer for layer in selected}
    order = [by_name[name] for name in original]  # execution order
    uncalled = _uncalled_layers(selected, original, plan.layers)
    if plan.mode == "cascade":
        check_cascade_overrides(plan.epsilon, order)
    report = Report(mode=plan.mode, backend=plan.backend, folded_batchnorm=dict(graph.batchnorm),
                    reweight=plan.reweight, not_trimmed={**untrimmed_layers(work), **uncalled},
                    structure=plan.structure)
    if report.not_trimmed:
        warnings.warn(f"nettrim leaves these layers as they are: {report.not_trimmed}", stacklevel=3)
    trimmed_input = TrimmedInput(work, batches, positions, plan.max_samples, plan.seed)
    weights = {layer.name: layer.weight_matrix() for layer in order}
    trimming = Trimming(plan, order, set(graph.relu), original, weights, trimmed_input, targets, input_groups)
    return trimming, budgets, report, graph.batchnorm


def _trimmed(trimming: Trimming, report: Report, budgets: dict[str, float], scheduler: Scheduler,
             store: Checkpoint | None) -> Report:
    """Every layer trimmed (to the model's sparsity when the plan has one), then refitted once when the plan
    refits after the trim (Trimming.refit_in_loop: otherwise as they are trimmed). Returns the filled report."""
    plan = trimming.plan
    if plan.model_sparsity is None:
        trimming.run(report, budgets, scheduler, checkpoint=store, keep_signals=trimming.refit_after)
    else:  # its allocation gives the layers targets, which can make the refit one in the loop
        report = _reach_model_sparsity(trimming, report, budgets, scheduler)
    if trimming.refit_after:
        errors = refit_layers(trimming.order, trimming.relu, trimming.original, trimming.weights,
                              trimming.trimmed_input, plan.progress)
        for row in report.layers:
            row.refit_error = errors[row.name]
    return report


def _finish(model: nn.Module, work: nn.Module, trimming: Trimming, report: Report, folded: dict[str, str],
            example: torch.Tensor) -> None:
    """A finished trim's last steps: the dense fallback warning, neuron removal (structure="neurons"), `work`
    in the caller's training mode, and with inplace its weights copied into the caller's model."""
    fallbacks = report.dense_fallback_warning()
    if fallbacks:
        warnings.warn(fallbacks, UserWarning, stacklevel=3)
    if trimming.plan.structure == "neurons":
        _remove_neurons(model, work, trimming.order, report, example, trimming.plan.gather_inputs)
    work.train(model.training)
    if trimming.plan.inplace:
        _commit(model, work, trimming.order, folded)


def _remove_neurons(model: nn.Module, work: nn.Module, order: list[Layer], report: Report,
                    example: torch.Tensor, gather_inputs: bool) -> None:
    """Neuron trimming's surgery on `work` (nettrim/neurons.py; with gather_inputs, the first layer's unread
    inputs too), its widths and remaining nonzeros in the report's rows, and the model's parameters, FLOPs and CPU
    latency before (the caller's model, in eval mode) and after."""
    original = _working_copy(model)
    before = neurons.widths(order)
    neurons.remove_unread(work, order, example)
    after, counts = neurons.widths(order), {layer.name: neurons.nonzeros(layer) for layer in order}
    for row in report.layers:  # the nonzeros that remain: those reading a removed neuron went with it
        row.width_before, row.width_after = before[row.name], after[row.name]
        row.nonzeros_after, row.bias_nonzeros_after = counts[row.name]
    dropped = neurons.gather_read_inputs(work, order[0], example) if gather_inputs else 0
    sizes = {"before": neurons.model_size(original, example), "after": neurons.model_size(work, example)}
    report.size = {key: {when: sizes[when][key] for when in sizes} for key in ("params", "flops")}
    report.size["latency_ms"] = {str(batch): {"before": neurons.latency_ms(original, example, batch),
                                              "after": neurons.latency_ms(work, example, batch)}
                                 for batch in LATENCY_BATCHES}
    if dropped:
        report.size["inputs_dropped"] = {order[0].name: dropped}


def _model_state(model: nn.Module):
    """(name, float64 values) of every parameter and buffer of `model`, by name, one at a time (for fingerprint)."""
    for name, tensor in sorted(model.state_dict().items()):
        yield name, tensor.detach().to("cpu", torch.float64).numpy()


def _uncalled_layers(selected: list[Layer], original: dict, layers) -> dict[str, str]:
    """{name: reason} for the selected layers that the forward pass never calls as modules (their weights used
    functionally, as nn.MultiheadAttention uses out_proj): left as they are, unless `layers` names one exactly
    (an error, as for any layer that cannot be trimmed) or none is left."""
    uncalled = [layer.name for layer in selected if layer.name not in original]
    named = [] if layers is None else [layers] if isinstance(layers, str) else list(layers)
    refused = [name for name in uncalled if name in named]
    if refused or not original:
        raise ValueError(f"layers: {refused or uncalled} never called in the model's forward pass (their weights "
                         "are used functionally, as nn.MultiheadAttention uses out_proj), so they cannot be trimmed")
    return dict.fromkeys(uncalled, "never called as a module in the forward pass (its weight is used "
                                   "functionally, as nn.MultiheadAttention uses out_proj), so not trimmed")


def _working_copy(model: nn.Module) -> nn.Module:
    """A copy of the caller's model in eval mode, to trim (the caller's is never touched until the end)."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch nn.Module, got {type(model).__name__}")
    if any(parameter.is_meta for parameter in model.parameters()):
        raise ValueError("model: its parameters are on the meta device and hold no values; materialize them first "
                         "(model.to_empty(device='cpu'), then load_state_dict)")
    try:
        return copy.deepcopy(model).eval()
    except Exception as error:
        raise ValueError(f"model: cannot be copied with copy.deepcopy ({error})") from error


def _resume(store: Checkpoint, order: list[Layer], report: Report, progress: bool) -> None:
    """Set the weights of the layers the checkpoint holds and take their rows: the trim goes on after them."""
    by_name = {layer.name: layer for layer in order}
    for row in store.rows:
        by_name[row.name].set_weight_matrix(store.weights(row.name))
        report.layers.append(row)
    if store.rows and progress:
        print(f"nettrim: resuming from {store.folder}: {len(store.rows)} of {len(by_name)} layers already trimmed",
              file=sys.stderr, flush=True)


def _reach_model_sparsity(trimming: Trimming, template: Report, budgets: dict[str, float],
                          scheduler: Scheduler) -> Report:
    """Trim to the plan's model sparsity. Weights: each layer's share from nettrim/allocation.py, reached by the
    layer's own budget search, in one pass. Neurons: the smallest factor t on every layer's g whose trimmed model
    reaches it (bisection over whole trims, each warm started from the closest)."""
    if trimming.input_groups is None:
        return _allocated_trim(trimming, template, scheduler)
    return _scaled_trims(trimming, template, budgets, scheduler)


def _allocated_trim(trimming: Trimming, report: Report, scheduler: Scheduler) -> Report:
    """One pass with per-layer target sparsities that add up to the model's (nettrim/allocation.py), each layer's
    search starting from allocation's guess."""
    target = trimming.plan.model_sparsity
    allocation = allocate(trimming.order, trimming.weights, trimming.original, target)
    trimming.targets = allocation.shares
    trimming.run(report, allocation.budgets, scheduler, keep_signals=trimming.refit_after)
    reached = 1 - report.kept
    report.model_sparsity = {"target": target, "reached": reached, "allocation": allocation.shares}
    if reached < target - MODEL_SPARSITY_TOLERANCE:
        short = [row.name for row in report.layers if row.target_sparsity is not None
                 and 1 - row.kept < row.target_sparsity - MODEL_SPARSITY_TOLERANCE]
        warnings.warn(f"model_sparsity {target:g}: the trim reached {reached:.4f}; layers {short} stopped short of "
                      f"their shares at g = max_epsilon = {trimming.plan.max_epsilon:g}", UserWarning, stacklevel=5)
    return report


def _scaled_trims(trimming: Trimming, template: Report, budgets: dict[str, float], scheduler: Scheduler) -> Report:
    """The smallest factor t on every layer's g whose trimmed model, once its unread neurons are removed, reaches
    the model's sparsity (bisection over whole trims, each warm started from the closest); the model is left with
    that trim's weights."""
    plan, target = trimming.plan, trimming.plan.model_sparsity
    largest = budgets[trimming.order[0].name] if plan.mode == "cascade" else max(budgets.values())
    scaled = ScaledTrim(trimming, template, budgets, scheduler)
    search = smallest_budget(target, scaled, g_low=0.0, g_first=1.0, g_max=plan.max_epsilon / largest,
                             steps=12, rel_width=1e-3, close_enough=MODEL_SPARSITY_TOLERANCE,
                             measure=lambda outcome: outcome[2])
    report, solutions, reached = search.outcome
    for layer in trimming.order:
        layer.set_weight_matrix(solutions[layer.name])
    report.model_sparsity = {"target": target, "reached": reached, "scale": search.g,
                             "trims": [[scale, value] for scale, value in search.evaluations]}
    if not search.reached:  # above it by up to the weights of the neurons that go at the last step: reported
        warnings.warn(f"model_sparsity {target:g}: the trim reached {reached:.4f} (every g scaled by "
                      f"{search.g:.4g}, max_epsilon = {plan.max_epsilon:g})", UserWarning, stacklevel=5)
    return report


@dataclass
class ScaledTrim:
    """A whole neuron trim from the original weights with every layer's g scaled by one factor, for the model
    sparsity search: called with (scale, closest), closest the outcome of the closest scale tried (its weights
    warm start the solves), it returns the trim's (report, solutions, sparsity once its unread neurons are
    removed: neurons.sparsity_after_removal, on the first calibration batch)."""

    trimming: Trimming
    template: Report
    budgets: dict[str, float]
    scheduler: Scheduler

    def __call__(self, scale: float, closest) -> tuple[Report, dict[str, np.ndarray], float]:
        trimming = self.trimming
        for layer in trimming.order:
            layer.set_weight_matrix(trimming.weights[layer.name])
        report = replace(self.template, layers=[])
        solutions = trimming.run(report, {name: scale * g for name, g in self.budgets.items()}, self.scheduler,
                                 initial=None if closest is None else closest[1])
        model, example = trimming.trimmed_input.model, trimming.trimmed_input.batches[0]
        reached = neurons.sparsity_after_removal(model, trimming.order, example, report.weights)
        if trimming.plan.progress:
            print(f"nettrim: model sparsity {reached:.4f} with every g scaled by {scale:.4g} "
                  f"(target {trimming.plan.model_sparsity:g})", file=sys.stderr, flush=True)
        return report, solutions, reached


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
