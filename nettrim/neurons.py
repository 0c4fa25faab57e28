"""Neuron trimming (structure="neurons"): which rows of each layer's U form one of its inputs, and the surgery
that removes the neurons and channels no layer reads any more.

Each layer is solved with the rows' group norm (solvers/problem.py): a zero group of rows of layer l's U is an
input that l no longer reads, a neuron (or channel) of the layer that produces it. The surgery is torch-pruning's
(its dependency graph follows the channels through ReLU, pooling, folded BatchNorm, Flatten into a Linear,
residual adds and concatenations, and resizes every module they touch): it was chosen over our own because that
graph is the hard part and is well kept. A channel is removed only when every layer that reads it (after
Flatten, all its features) reads it with zero weights, so the smaller model computes exactly what the masked
one does; `remove_unread` checks that on the calibration inputs and refuses otherwise. A channel coupled to
others (a residual add) goes only when every consumer of the sum ignores it; output channels of the model's last
layers never go (nothing reads them).
"""

from __future__ import annotations

import copy
import statistics
import time

import torch
import torch_pruning as tp
from torch import nn

from .layers import Layer

#: The relative difference between the masked and the smaller model's outputs that float rounding explains.
EXACT_RTOL = 1e-4


def dependency_graph(model: nn.Module, example: torch.Tensor) -> tp.DependencyGraph:
    """torch-pruning's dependency graph of `model` traced on one input of `example` (a batch of inputs)."""
    try:
        return tp.DependencyGraph().build_dependency(model, example_inputs=example[:1])
    except Exception as error:  # torch-pruning traces with autograd; models it cannot follow raise many types
        raise ValueError(f"model: structure='neurons' needs torch-pruning's dependency graph, which cannot be "
                         f"built for this model ({type(error).__name__}: {error}); use structure='weights'") from error


def _consumers(graph: tp.DependencyGraph, producer: nn.Module, channels: list[int]):
    """[(module, input indices)] of the modules whose inputs `channels` of `producer` are, and whether every one
    of them is a layer whose weight columns can be checked (Linear, or a conv with groups = 1)."""
    group = graph.get_pruning_group(producer, graph.get_pruner_of_module(producer).prune_out_channels,
                                    idxs=channels)
    readers, checkable = [], True
    for item in group.items:
        dep, idxs = item.dep, item.idxs
        if getattr(dep.handler, "__name__", "") != "prune_in_channels":
            continue
        module = dep.target.module
        ordinary = isinstance(module, nn.Linear) or (isinstance(module, nn.Conv1d | nn.Conv2d) and module.groups == 1)
        checkable &= ordinary
        readers.append((module, [int(index) for index in idxs]))
    return readers, checkable


def input_group_sizes(model: nn.Module, order: list[Layer], example: torch.Tensor) -> dict[str, int]:
    """The rows of U per input of each layer (the rows' objective's group_size): a conv's kh x kw per input
    channel; for a layer fed by a selected layer through Flatten, the features of one of its channels (times
    the kernel); 1 for a Linear on a Linear or on the model's input. Read from the dependency graph on one
    channel of each producer; a layer whose inputs are not contiguous blocks per channel gets its kernel size."""
    sizes = {layer.name: _kernel_size(layer.module) for layer in order}
    graph = dependency_graph(model, example)
    by_module = {id(layer.module): layer for layer in order}
    for layer in order:
        if layer.module not in graph.module2node:  # not called as a module (its weight used functionally)
            continue
        readers, _ = _consumers(graph, layer.module, [0])
        channels = layer.module.weight.shape[0]
        for module, idxs in readers:
            reader = by_module.get(id(module))
            if reader is None or reader.groups != 1:
                continue
            inputs = module.weight.shape[1]
            if idxs == list(range(len(idxs))) and inputs == channels * len(idxs):
                sizes[reader.name] = len(idxs) * _kernel_size(module)
    return sizes


def _kernel_size(module: nn.Module) -> int:
    return 1 if isinstance(module, nn.Linear) else int(torch.tensor(module.weight.shape[2:]).prod())


def _read_with_zeros(module: nn.Module, idxs: list[int]) -> bool:
    """Does `module` (Linear or conv) read its inputs `idxs` with zero weights only?"""
    return not bool(module.weight.detach()[:, idxs].any())


def unread_channels(graph: tp.DependencyGraph, layer: Layer) -> list[int]:
    """The output channels of `layer` that every layer reading them reads with zero weights (and that some layer
    reads: the model's outputs are never unread)."""
    if layer.module not in graph.module2node:
        return []
    unread = []
    for channel in range(layer.module.weight.shape[0]):
        readers, checkable = _consumers(graph, layer.module, [channel])
        if readers and checkable and all(_read_with_zeros(module, idxs) for module, idxs in readers):
            unread.append(channel)
    return unread


def remove_unread(model: nn.Module, order: list[Layer], example: torch.Tensor) -> dict[str, list[int]]:
    """Remove, in place, the output channels of the layers in `order` that no layer reads any more (module
    docstring), keeping at least one per layer; returns them by layer. Raises RuntimeError if the smaller model's
    outputs on `example` are not the masked model's (a dependency the graph missed)."""
    with torch.no_grad():
        expected = model(example)
    removed = {}
    for layer in order:
        graph = dependency_graph(model, example)  # rebuilt: the previous removals changed the shapes
        unread = unread_channels(graph, layer)[:layer.module.weight.shape[0] - 1]
        if unread:
            graph.get_pruning_group(layer.module, graph.get_pruner_of_module(layer.module).prune_out_channels,
                                    idxs=unread).prune()
        removed[layer.name] = unread
    with torch.no_grad():
        outputs = model(example)
    if not _same_outputs(expected, outputs):
        raise RuntimeError("structure='neurons': the smaller model's outputs differ from the trimmed model's; a "
                           "dependency between channels was missed (please report the model)")
    return removed


def _same_outputs(expected, outputs) -> bool:
    if isinstance(expected, torch.Tensor):
        scale = max(float(expected.abs().max()), 1e-12)
        return outputs.shape == expected.shape and float((outputs - expected).abs().max()) <= EXACT_RTOL * scale
    if isinstance(expected, tuple | list):
        return len(expected) == len(outputs) and all(map(_same_outputs, expected, outputs))
    if isinstance(expected, dict):
        return expected.keys() == outputs.keys() and all(_same_outputs(expected[k], outputs[k]) for k in expected)
    return True


class GatheredInputs(nn.Module):
    """A layer that reads only some of its inputs: forward(x) = layer(x.index_select(dim, index)), where `layer`
    (a Linear, or a conv with groups = 1) holds the weights of those inputs alone (`dim` -1 for a Linear's
    features, 1 for a conv's channels)."""

    def __init__(self, layer: nn.Module, index: torch.Tensor, dim: int):
        super().__init__()
        self.layer, self.dim = layer, dim
        self.register_buffer("index", index)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x.index_select(self.dim, self.index))


def gather_read_inputs(model: nn.Module, layer: Layer, example: torch.Tensor) -> int:
    """Replace `layer` in `model` (in place) by a GatheredInputs over the inputs it reads with a nonzero weight (a
    Linear's features, a conv's channels; at least one), when it leaves some unread; returns how many it
    no longer reads. Raises RuntimeError if the outputs on `example` change (they cannot: the inputs dropped
    are multiplied by zeros)."""
    module = layer.module
    if not isinstance(module, nn.Linear | nn.Conv1d | nn.Conv2d) or getattr(module, "groups", 1) != 1:
        return 0
    weight = module.weight.detach()
    read = torch.nonzero(weight.reshape(weight.shape[0], weight.shape[1], -1).abs().sum(dim=(0, 2))).flatten()
    read = read if read.numel() else torch.zeros(1, dtype=torch.int64)
    if read.numel() == weight.shape[1]:
        return 0
    with torch.no_grad():
        expected = model(example)
        smaller = copy.deepcopy(module)
        smaller.weight = nn.Parameter(weight[:, read].clone(), requires_grad=module.weight.requires_grad)
        setattr(smaller, "in_features" if isinstance(module, nn.Linear) else "in_channels", int(read.numel()))
        model.set_submodule(layer.name, GatheredInputs(smaller, read.to(weight.device), -1 if isinstance(
            module, nn.Linear) else 1))
        if not _same_outputs(expected, model(example)):
            raise RuntimeError(f"layer {layer.name!r}: gathering the inputs it reads changed the outputs")
    return int(weight.shape[1] - read.numel())


def nonzeros(layer: Layer) -> tuple[int, int]:
    """The nonzero (weights, biases) of a layer as its module now is."""
    bias = layer.module.bias
    return int(torch.count_nonzero(layer.module.weight)), 0 if bias is None else int(torch.count_nonzero(bias))


def sparsity_after_removal(model: nn.Module, order: list[Layer], example: torch.Tensor, weights: int) -> float:
    """1 - (nonzero weights of `order`'s layers once a copy of `model` has lost the neurons no layer reads,
    remove_unread) / `weights`, the layers' original weight count: the model sparsity a neuron trim delivers (the
    weights that read a removed neuron go with it, though they were not zero)."""
    smaller = copy.deepcopy(model)
    layers = [Layer(layer.name, smaller.get_submodule(layer.name)) for layer in order]
    remove_unread(smaller, layers, example)
    return 1.0 - sum(nonzeros(layer)[0] for layer in layers) / max(weights, 1)


def widths(order: list[Layer]) -> dict[str, int]:
    """The output neurons (channels) of each layer."""
    return {layer.name: int(layer.module.weight.shape[0]) for layer in order}


def model_size(model: nn.Module, example: torch.Tensor) -> dict:
    """{"params": parameters, "flops": floating-point operations of one forward pass on one input (torch's
    flop counter: 2 per multiply-add)} of `model`."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(example[:1])
    return {"params": sum(parameter.numel() for parameter in model.parameters()),
            "flops": int(counter.get_total_flops())}


def latency_ms(model: nn.Module, example: torch.Tensor, batch: int, seconds: float = 1.0,
               repeats: tuple[int, int] = (3, 50)) -> float:
    """The median wall time (ms) of a forward pass of `model` on `batch` copies of one input, over repeated runs
    after one warm-up (at least repeats[0], at most repeats[1], until `seconds` have passed)."""
    inputs = example[:1].expand(batch, *example.shape[1:]).contiguous()
    times = []
    with torch.inference_mode():
        model(inputs)
        start = time.perf_counter()
        while len(times) < repeats[1] and (len(times) < repeats[0] or time.perf_counter() - start < seconds):
            begin = time.perf_counter()
            model(inputs)
            times.append(1e3 * (time.perf_counter() - begin))
    return statistics.median(times)
