"""Calibration data and the signals each layer sees: X (N, P) for the layer program, captured by hooks.

The calibration batches are materialized once, so that every forward pass (the original network's, and in
cascade mode the partly trimmed network's) sees the same samples in the same order; with a per-layer sample
budget the same seeded positions are drawn on every pass, so X and Xhat describe the same samples.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.ops import aten
from torch.utils._python_dispatch import TorchDispatchMode

from .graph import refuse_shared
from .layers import Layer

DEFAULT_BATCH_SIZE = 1024


def calibration_batches(calibration, batch_size: int = DEFAULT_BATCH_SIZE) -> list[torch.Tensor]:
    """A tensor (split into batches) or an iterable of batches, each x or (x, y, ...), as a list of inputs."""
    if isinstance(calibration, np.ndarray):
        calibration = torch.from_numpy(calibration)
    if isinstance(calibration, torch.Tensor):
        if calibration.dim() == 0 or len(calibration) == 0:
            raise ValueError(f"calibration: an empty tensor (shape {tuple(calibration.shape)})")
        return list(calibration.split(batch_size))
    if not isinstance(calibration, Iterable):
        raise ValueError(f"calibration must be a tensor or an iterable of batches, got {type(calibration).__name__}")
    batches = []
    for batch in calibration:
        x = batch[0] if isinstance(batch, tuple | list) else batch
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(x)
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"calibration: each batch must be a tensor or (x, y), got {type(x).__name__}")
        batches.append(x)
    if not batches:
        raise ValueError("calibration: no batches")
    return batches


class _Sampler:
    """Seeded subsampling of one layer's samples to at most `max_samples`, identical on every pass: each batch's
    samples are drawn before they are formed (Layer.features gathers only those), then the batches' together."""

    def __init__(self, max_samples: int | None, seed: int, index: int):
        self.max_samples, self.seed, self.index = max_samples, seed, index
        self.rng = np.random.default_rng([seed, index])

    def choose(self, count: int) -> torch.Tensor | None:
        """The indices (sorted) of the samples to keep among `count`, or None for all of them."""
        if self.max_samples is None or count <= self.max_samples:
            return None
        return torch.from_numpy(np.sort(self.rng.choice(count, self.max_samples, replace=False)))

    def take(self, parts: list[torch.Tensor], bias: bool) -> np.ndarray:
        """X (features + bias, samples) in float64: the chosen samples (columns) of the batches' `parts` side by
        side, copied once from each part without stacking the others, and a last row of ones when `bias`."""
        chosen = self.choose(sum(part.shape[1] for part in parts))
        if chosen is not None:
            starts = np.cumsum([0] + [part.shape[1] for part in parts])
            bounds = np.searchsorted(chosen.numpy(), starts)
            parts = [part[:, chosen[low:high] - start] for part, start, low, high in
                     zip(parts, starts[:-1], bounds[:-1], bounds[1:], strict=True)]
        features = parts[0].shape[0]
        X = np.empty((features + bias, sum(part.shape[1] for part in parts)))
        torch.cat(parts, dim=1, out=torch.from_numpy(X[:features]))  # converted to float64 as it is copied
        if bias:
            X[-1] = 1.0
        return X


class _Stop(Exception):
    """Raised by a hook once every wanted layer has been captured: the rest of the forward pass is not needed."""


def _model_device(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


@torch.no_grad()
def capture(model: nn.Module, batches: list[torch.Tensor], layers: list[Layer], positions: dict[str, int],
            max_samples: int | None, seed: int, refuse_shared_layers: bool = True) -> dict[str, np.ndarray]:
    """Run the calibration batches through `model` and return X (N, P) in float64 for each of `layers`, in the
    order the forward pass reaches them: the layer's input samples (patches for a conv), subsampled to
    `max_samples` by a sampler seeded with (seed, positions[name]), with a row of ones when it has a bias.

    A forward error names the layer it happened in and the shapes; NaN or Inf in a signal names the layer. With
    refuse_shared_layers, the first batch runs the whole forward pass, so that a layer called more than once
    (shared weights: its inputs would mix call sites, and one set of weights cannot keep both calls' budgets) is
    refused by name, also where torch.fx could not trace the model; other batches (all of them, without it: a
    cascade's re-capture of layers already checked) stop once every layer has its input. A layer the forward
    pass never calls as a module (its weight used functionally, as nn.MultiheadAttention does with out_proj) has
    no entry.
    """
    device = _model_device(model)
    samplers = {layer.name: _Sampler(max_samples, seed, positions[layer.name]) for layer in layers}
    collected: dict[str, list[torch.Tensor]] = {}  # filled in execution order
    remaining: set[str] = set()
    calls: dict[str, int] = {}  # of each layer, in the first batch
    first_batch = refuse_shared_layers
    scripted = isinstance(model, torch.jit.ScriptModule)

    def on_input(layer: Layer, inputs: torch.Tensor) -> None:
        if first_batch:
            calls[layer.name] = calls.get(layer.name, 0) + 1
            if calls[layer.name] > 1:  # refused once the batch is through
                return
        collected.setdefault(layer.name, []).append(layer.columns(inputs, samplers[layer.name].choose).to("cpu"))
        remaining.discard(layer.name)
        if not remaining and not scripted and not first_batch:  # no exception crosses TorchScript cleanly
            raise _Stop

    current: list = []  # (layer, input shape) of the running layer, for error messages (hooks only)
    observe = _observe_dispatch if scripted else _observe_hooks
    with observe(layers, on_input, current):
        for batch in batches:
            remaining.update(layer.name for layer in layers)
            current.clear()
            try:
                model(batch.to(device))
            except _Stop:
                pass
            except Exception as error:
                raise _forward_error(error, current, batch) from error
            if first_batch:
                refuse_shared(calls)
                first_batch = False

    signals = {}
    for name, parts in collected.items():
        layer = next(layer for layer in layers if layer.name == name)
        X = samplers[name].take(parts, layer.has_bias)
        if not np.all(np.isfinite(X)):
            raise ValueError(f"calibration: layer {name!r} receives NaN or Inf in its input signals")
        signals[name] = X
    return signals


@contextmanager
def _observe_hooks(layers: list[Layer], on_input, current: list):
    """Forward pre-hooks call on_input(layer, input); forward hooks keep track of the running layer."""
    def pre_hook(layer):
        def hook(module, args):
            current.append((layer, tuple(args[0].shape)))
            on_input(layer, args[0])
        return hook

    def post_hook(module, args, output):
        current.pop()

    handles = []
    try:
        for layer in layers:
            handles.append(layer.module.register_forward_pre_hook(pre_hook(layer)))
            handles.append(layer.module.register_forward_hook(post_hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


class _LayerInputs(TorchDispatchMode):
    """Sees every aten op (TorchScript included) and passes the input of each product with a layer's weight
    to on_input: aten.convolution(x, weight, ...), and aten.addmm(bias, x, weight^T) / aten.mm(x, weight^T),
    which is what a linear layer dispatches to. Weights are recognized by their storage."""

    def __init__(self, layers: list[Layer], on_input):
        super().__init__()
        self.by_storage = {layer.module.weight.untyped_storage().data_ptr(): layer for layer in layers}
        self.on_input = on_input

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        packet = func.overloadpacket
        weight_and_input = {aten.convolution: (1, 0), aten.addmm: (2, 1), aten.mm: (1, 0)}.get(packet)
        if weight_and_input is not None:
            weight = args[weight_and_input[0]]
            layer = self.by_storage.get(weight.untyped_storage().data_ptr())
            if layer is not None:
                self.on_input(layer, args[weight_and_input[1]])
        return func(*args, **(kwargs or {}))


@contextmanager
def _observe_dispatch(layers: list[Layer], on_input, current: list):
    """For TorchScript modules, which do not run Python hooks: watch the dispatched products instead."""
    with _LayerInputs(layers, on_input):
        yield


def _forward_error(error: Exception, current: list, batch: torch.Tensor) -> ValueError:
    if current:
        layer, shape = current[-1]
        module = layer.module
        expected = (f"in_features={module.in_features}" if layer.kind == "linear"
                    else f"in_channels={module.in_channels}")
        return ValueError(f"calibration: the forward pass failed in layer {layer.name!r} "
                          f"({type(module).__name__}, {expected}) on an input of shape {shape} "
                          f"(calibration batch {tuple(batch.shape)}): {error}")
    return ValueError(f"calibration: the model's forward pass failed on a batch of shape {tuple(batch.shape)}: "
                      f"{type(error).__name__}: {error}")


@dataclass
class TrimmedInput:
    """A layer's input X in `model` as trimmed so far (a cascade's re-capture): the calibration batches through
    the model, sampled as the original capture was (capture's positions, max_samples and seed)."""

    model: nn.Module
    batches: list[torch.Tensor]
    positions: dict[str, int]
    max_samples: int | None
    seed: int

    def __call__(self, layer: Layer) -> np.ndarray:
        return capture(self.model, self.batches, [layer], self.positions, self.max_samples, self.seed,
                       refuse_shared_layers=False)[layer.name]
