"""Adapters between torch layers and the layer program: weights as an (N, M) matrix, inputs as (N, P) samples.

A layer computes Y = W^T X on samples x (columns of X) with the bias as the last row of W and a row of ones
in X:

    nn.Linear(in, out):        x = the input vector (plus 1),       W = [weight^T; bias]      (in (+1), out)
    nn.Conv2d(C, out, k):      x = one input patch C x kh x kw,     W = [weight.reshape(out, -1)^T; bias]
                               (one sample per output position: the conv is a matrix product on unfolded
                               patches, so P = images x output positions, subsampled to a budget)

Layers are selected by type (nn.Linear, nn.Conv2d) and by name or regex (a full match of the module name).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

TRIMMABLE = (nn.Linear, nn.Conv2d)
_KINDS = {"Linear": "linear", "Conv2d": "conv2d"}


def layer_kind(module: nn.Module) -> str | None:
    """"linear" or "conv2d" for an nn.Linear or nn.Conv2d (also inside a TorchScript module), else None."""
    if isinstance(module, torch.jit.ScriptModule):
        return _KINDS.get(module.original_name)
    if isinstance(module, nn.Linear):
        return "linear"
    return "conv2d" if isinstance(module, nn.Conv2d) else None


#: Modules with weights that nettrim does not trim (yet): each one is named in the report and a warning.
UNSUPPORTED = (nn.Conv1d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Bilinear)


def untrimmed_layers(model: nn.Module) -> dict[str, str]:
    """{name: reason} for the model's modules with weights that nettrim does not trim."""
    return {name: f"{type(module).__name__} is not supported (nn.Linear and nn.Conv2d are)"
            for name, module in model.named_modules() if isinstance(module, UNSUPPORTED)}


@dataclass
class Layer:
    """A trimmable module of a model, known by its qualified name."""

    name: str
    module: nn.Module  # nn.Linear or nn.Conv2d (or their TorchScript form)

    @property
    def kind(self) -> str:
        return layer_kind(self.module)

    @property
    def has_bias(self) -> bool:
        return self.module.bias is not None

    def weight_matrix(self) -> np.ndarray:
        """W (N, M) in float64: one column per output unit, the bias (if any) as the last row."""
        weight = self.module.weight.detach().to("cpu", torch.float64).reshape(self.module.weight.shape[0], -1)
        columns = [weight.T]
        if self.has_bias:
            columns.append(self.module.bias.detach().to("cpu", torch.float64)[None, :])
        return torch.cat(columns).numpy()

    def set_weight_matrix(self, U: np.ndarray) -> None:
        """Write U (N, M) back into the module's weight and bias, in their dtype and device."""
        weight, bias = self.module.weight, self.module.bias
        U = torch.as_tensor(np.asarray(U, dtype=np.float64))
        features = weight[0].numel()
        with torch.no_grad():
            weight.copy_(U[:features].T.reshape(weight.shape).to(weight))
            if bias is not None:
                bias.copy_(U[features].to(bias))

    def features(self, inputs: torch.Tensor) -> torch.Tensor:
        """The samples the layer multiplies by its weight, one per row: (samples, in features), no bias column."""
        module = self.module
        if self.kind == "linear":
            return inputs.reshape(-1, module.in_features)
        if inputs.dim() == 3:  # an unbatched image (C, H, W)
            inputs = inputs[None]
        padded = F.pad(inputs, _pad_widths(module), mode=_PAD_MODES[module.padding_mode])
        patches = F.unfold(padded, module.kernel_size, dilation=module.dilation, stride=module.stride)
        return patches.transpose(1, 2).reshape(-1, patches.shape[1])

    def check_supported(self) -> None:
        module = self.module
        if self.kind == "conv2d" and module.groups != 1:
            raise ValueError(f"layers: {self.name!r} is a grouped convolution (groups={module.groups}); only "
                             "groups=1 is supported, so leave it out with exclude=")


_PAD_MODES = {"zeros": "constant", "reflect": "reflect", "replicate": "replicate", "circular": "circular"}


def _pad_widths(conv: nn.Conv2d) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) padding as F.pad takes it, for int, tuple, "valid" and "same" padding."""
    if conv.padding == "valid":
        return (0, 0, 0, 0)
    if conv.padding == "same":  # torch puts the odd pixel on the right/bottom
        widths = []
        for dilation, size in zip(reversed(conv.dilation), reversed(conv.kernel_size), strict=True):
            total = dilation * (size - 1)
            widths += [total // 2, total - total // 2]
        return tuple(widths)
    pad_h, pad_w = conv.padding
    return (pad_w, pad_w, pad_h, pad_h)


def _matches(name: str, module: nn.Module, selector) -> bool:
    if isinstance(selector, type):
        return layer_kind(module) == _KINDS[selector.__name__]
    return name == selector or re.fullmatch(selector, name) is not None


def _check_selectors(argument: str, selectors) -> list:
    if selectors is None:
        return []
    if isinstance(selectors, str | type):
        selectors = [selectors]
    selectors = list(selectors)
    for selector in selectors:
        if isinstance(selector, type):
            if selector not in TRIMMABLE:
                raise ValueError(f"{argument}: {selector.__name__} is not a trimmable type (nn.Linear, nn.Conv2d)")
        elif isinstance(selector, str):
            try:
                re.compile(selector)
            except re.error as error:
                raise ValueError(f"{argument}: {selector!r} is not a valid regular expression ({error})") from None
        else:
            raise ValueError(f"{argument}: expected layer names, regexes or module types, got {selector!r}")
    return selectors


def select_layers(model: nn.Module, layers=None, exclude=None) -> list[Layer]:
    """The nn.Linear and nn.Conv2d modules of `model` that `layers` selects (all of them when None) and
    `exclude` does not. Each selector is a module type, an exact name, or a regex matched against the whole
    name; a selector that matches no trimmable layer is an error (a typo should not trim nothing silently)."""
    include, leave_out = _check_selectors("layers", layers), _check_selectors("exclude", exclude)
    candidates = [(name, module) for name, module in model.named_modules() if layer_kind(module)]
    for argument, selectors in (("layers", include), ("exclude", leave_out)):
        for selector in selectors:
            if not any(_matches(name, module, selector) for name, module in candidates):
                shown = selector.__name__ if isinstance(selector, type) else repr(selector)
                raise ValueError(f"{argument}: {shown} matches no nn.Linear or nn.Conv2d layer of the model "
                                 f"(its layers: {[name for name, _ in candidates]})")
    chosen = [
        Layer(name, module) for name, module in candidates
        if (not include or any(_matches(name, module, s) for s in include))
        and not any(_matches(name, module, s) for s in leave_out)
    ]
    if not chosen:
        raise ValueError("model: no trimmable layer selected (nettrim trims nn.Linear and nn.Conv2d modules; "
                         f"the model has {len(candidates)} and layers/exclude leave none)")
    for layer in chosen:
        layer.check_supported()
    return chosen
