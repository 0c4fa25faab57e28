"""What follows each layer, read from the torch.fx graph: a BatchNorm to fold, then a ReLU or not.

A layer is trimmed with the relu program only when every use of its output (after a folded BatchNorm) is a
ReLU: nn.ReLU, F.relu, torch.relu, Tensor.relu and their in-place forms. Anything else (no activation, a
pooling first, a residual sum, a second consumer) gets the linear program, which is always safe.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

_RELU_FUNCTIONS = {F.relu, torch.relu, torch.relu_, getattr(F, "relu_", None)} - {None}
_RELU_METHODS = {"relu", "relu_"}
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


@dataclass
class LayerGraph:
    """For the selected layers: which ones feed a ReLU, and which BatchNorm (by name) follows which layer."""

    relu: set[str] = field(default_factory=set)
    batchnorm: dict[str, str] = field(default_factory=dict)  # layer name -> BatchNorm module name


def _is_relu(node: torch.fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules.get(node.target), nn.ReLU)
    if node.op == "call_function":
        return node.target in _RELU_FUNCTIONS
    if node.op == "call_method":
        return node.target in _RELU_METHODS
    return False


def trace_layers(model: nn.Module, names: list[str]) -> LayerGraph:
    """Trace `model` with torch.fx and find, for each layer in `names`, a following BatchNorm and ReLU."""
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as error:  # fx raises many types (TraceError, TypeError, AttributeError...) for the same cause
        raise ValueError(
            f"model: torch.fx cannot trace it ({type(error).__name__}: {error}). Name the layers whose output "
            "goes straight into a ReLU with relu_layers=[...] (CLI: --relu-layers); the other layers are then "
            "trimmed with the linear program, and BatchNorm layers are not folded."
        ) from error
    modules = dict(model.named_modules())
    wanted = set(names)
    found = LayerGraph()
    called = {node.target for node in graph.nodes if node.op == "call_module"}
    hidden = [name for name in names if name not in called]
    if hidden:
        warnings.warn(f"torch.fx sees {hidden} only inside modules it does not trace into (such as "
                      "nn.TransformerEncoderLayer), so whether a ReLU follows them is unknown: they get the linear "
                      "program, which is safe but less sparse; name the ones followed by a ReLU with relu_layers=",
                      UserWarning, stacklevel=3)
    for node in graph.nodes:
        if node.op != "call_module" or node.target not in wanted:
            continue
        output = node
        users = list(output.users)
        if len(users) == 1 and users[0].op == "call_module" and isinstance(modules.get(users[0].target), _BATCHNORMS):
            found.batchnorm[node.target] = users[0].target
            output = users[0]
            users = list(output.users)
        if users and all(_is_relu(user, modules) for user in users):
            found.relu.add(node.target)
    counts = {}
    for node in graph.nodes:
        if node.op == "call_module" and node.target in wanted:
            counts[node.target] = counts.get(node.target, 0) + 1
    refuse_shared(counts)
    return found


def refuse_shared(calls: dict[str, int]) -> None:
    """A layer called more than once (shared weights) cannot keep both calls' budgets with one set of weights."""
    shared = [name for name, count in calls.items() if count > 1]
    if shared:
        raise ValueError(f"layers: {shared} are called more than once in the forward pass (shared weights); "
                         "leave them out with exclude=")


def fold_batchnorm(model: nn.Module, pairs: dict[str, str]) -> None:
    """Fold each BatchNorm into the layer before it (eval-mode statistics) and put nn.Identity in its place.

    conv/linear z = W x + b followed by BN gives gamma (z - mean) / sqrt(var + eps) + beta, an affine map of
    the same form, computed by torch.nn.utils.fusion. Modifies `model`, which must be a copy in eval mode.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

    modules = dict(model.named_modules())
    for layer_name, bn_name in pairs.items():
        layer, bn = modules[layer_name], modules[bn_name]
        if not bn.track_running_stats or bn.running_mean is None:
            raise ValueError(f"model: BatchNorm {bn_name!r} after {layer_name!r} keeps no running statistics, "
                             "so it cannot be folded; leave the layer out with exclude=")
        fuse = fuse_linear_bn_eval if isinstance(layer, nn.Linear) else fuse_conv_bn_eval
        fused = fuse(layer, bn)
        with torch.no_grad():  # keep the module object (and its hooks) and give it a bias if it had none
            layer.weight.copy_(fused.weight)
            if layer.bias is None:
                layer.bias = nn.Parameter(fused.bias.detach().clone())
            else:
                layer.bias.copy_(fused.bias)
        model.set_submodule(bn_name, nn.Identity())
