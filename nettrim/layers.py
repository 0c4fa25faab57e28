"""Adapters between torch layers and the layer program: weights as an (N, M) matrix, inputs as (N, P) samples.

A layer computes Y = W^T X on samples x (columns of X) with the bias as the last row of W and a row of ones
in X:

    nn.Linear(in, out):        x = the input vector (plus 1),       W = [weight^T; bias]      (in (+1), out)
    nn.Conv2d(C, out, k):      x = one input patch C x kh x kw,     W = [weight.reshape(out, -1)^T; bias]
                               (one sample per output position: the conv is a matrix product on unfolded
                               patches, so P = images x output positions, subsampled to a budget)
    nn.Conv1d(C, out, k):      the same with patches C x k (a Conv2d of height 1)

A grouped convolution (groups = G, depthwise when G = C) is block diagonal: output channel m of group g reads
only the C / G input channels of group g. W keeps torch's compact form, one column per output channel over its
group's (C / G) x kh x kw inputs (plus the bias), and X holds every channel's patches, so group g's program
has the input X_g = the rows of its channels (plus the ones row): G independent programs
(solvers/grouped.py), and the response of neuron m is W[:, m]^T X_g(m).

Layers are selected by type (nn.Linear, nn.Conv2d, nn.Conv1d) and by name or regex (a full match of the module
name).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

TRIMMABLE = (nn.Linear, nn.Conv2d, nn.Conv1d)
_KINDS = {"Linear": "linear", "Conv2d": "conv2d", "Conv1d": "conv1d"}


def layer_kind(module: nn.Module) -> str | None:
    """"linear", "conv2d" or "conv1d" for an nn.Linear, nn.Conv2d or nn.Conv1d (also inside a TorchScript
    module), else None."""
    if isinstance(module, torch.jit.ScriptModule):
        return _KINDS.get(module.original_name)
    return next((_KINDS[kind.__name__] for kind in TRIMMABLE if isinstance(module, kind)), None)


#: Modules with weights that nettrim does not trim (yet): each one is named in the report and a warning.
UNSUPPORTED = (nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Bilinear)


def untrimmed_layers(model: nn.Module) -> dict[str, str]:
    """{name: reason} for the model's modules with weights that nettrim does not trim."""
    return {name: f"{type(module).__name__} is not supported (nn.Linear, nn.Conv2d and nn.Conv1d are)"
            for name, module in model.named_modules() if isinstance(module, UNSUPPORTED)}


@dataclass
class Layer:
    """A trimmable module of a model, known by its qualified name."""

    name: str
    module: nn.Module  # nn.Linear, nn.Conv2d or nn.Conv1d (or their TorchScript form)

    @property
    def kind(self) -> str:
        return layer_kind(self.module)

    @property
    def has_bias(self) -> bool:
        return self.module.bias is not None

    @property
    def groups(self) -> int:
        """G, the groups of a grouped convolution (1 for a Linear or an ordinary conv)."""
        return 1 if self.kind == "linear" else int(self.module.groups)

    def group_columns(self) -> list[slice]:
        """The neurons (columns of W) of each group, in order."""
        per_group = self.module.weight.shape[0] // self.groups
        return [slice(g * per_group, (g + 1) * per_group) for g in range(self.groups)]

    def group_inputs(self, X: np.ndarray) -> list[np.ndarray]:
        """X_g (N x P) of each group from the layer's X: the rows of the group's input channels, plus the
        ones row of the bias (module docstring); [X] when G = 1."""
        if self.groups == 1:
            return [X]
        width = self.module.weight[0].numel()
        return [np.concatenate([X[g * width:(g + 1) * width], X[X.shape[0] - self.has_bias:]])
                for g in range(self.groups)]

    def response(self, U: np.ndarray, X: np.ndarray) -> np.ndarray:
        """The pre-activation (M x P) of weights U (N x M, in weight_matrix's form) on the layer's input X."""
        if self.groups == 1:
            return U.T @ X
        return np.concatenate([U[:, columns].T @ X_g
                               for columns, X_g in zip(self.group_columns(), self.group_inputs(X), strict=True)])

    def weight_matrix(self) -> np.ndarray:
        """W (N, M) in float64: one column per output unit (over its group's inputs), the bias (if any) as the
        last row."""
        weight = self.module.weight.detach().reshape(self.module.weight.shape[0], -1)
        W = torch.empty((weight.shape[1] + self.has_bias, weight.shape[0]), dtype=torch.float64)
        W[:weight.shape[1]].copy_(weight.T)  # converted as it is copied: no float64 temporary of the weight
        if self.has_bias:
            W[-1].copy_(self.module.bias.detach())
        return W.numpy()

    def set_weight_matrix(self, U: np.ndarray) -> None:
        """Write U (N, M) back into the module's weight and bias, in their dtype and device."""
        weight, bias = self.module.weight, self.module.bias
        U = torch.as_tensor(np.asarray(U, dtype=np.float64))
        features = weight[0].numel()
        with torch.no_grad():
            weight.copy_(U[:features].T.reshape(weight.shape))  # copy_ converts dtype and device
            if bias is not None:
                bias.copy_(U[features])

    def features(self, inputs: torch.Tensor, choose=None) -> torch.Tensor:
        """The samples the layer multiplies by its weight, one per row: (samples, in features), no bias column;
        columns(inputs, choose) transposed."""
        return self.columns(inputs, choose).T

    def columns(self, inputs: torch.Tensor, choose=None) -> torch.Tensor:
        """The samples the layer multiplies by its weight, one per column: (in features, samples), no bias row.
        With `choose` (a function of the number of samples returning the indices of those to keep, or None for
        all), only the chosen samples, in the order of F.unfold's patches image by image: a conv gathers just those
        patches from its padded input, straight into this layout, and never unfolds the others."""
        if self.kind == "linear":
            rows = inputs.reshape(-1, self.module.in_features)
            chosen = None if choose is None else choose(len(rows))
            # a copy either way: the forward pass may change its input in place after the layer has read it
            return (rows.clone() if chosen is None else rows[chosen.to(rows.device)]).T
        padded = self._padded(inputs)
        kernel, dilation, stride = (tuple(value) if self.kind == "conv2d" else (1, *value) for value in
                                    (self.module.kernel_size, self.module.dilation, self.module.stride))
        output_size = [(size - d * (k - 1) - 1) // s + 1
                       for size, d, k, s in zip(padded.shape[2:], dilation, kernel, stride, strict=True)]
        chosen = None if choose is None else choose(len(padded) * math.prod(output_size))
        if chosen is None:
            patches = F.unfold(padded, kernel, dilation=dilation, stride=stride)  # (images, features, positions)
            return patches.transpose(0, 1).reshape(patches.shape[1], -1)
        return _gather_patches(padded, chosen.to(padded.device), output_size, kernel, dilation, stride)

    def _padded(self, inputs: torch.Tensor) -> torch.Tensor:
        """The conv's input padded as the conv pads it, batched, as (images, C, H, W) (height 1 for a Conv1d)."""
        image_dims = 2 if self.kind == "conv2d" else 1
        if inputs.dim() == image_dims + 1:  # one unbatched input, (C, H, W) or (C, L)
            inputs = inputs[None]
        padded = F.pad(inputs, _pad_widths(self.module), mode=_PAD_MODES[self.module.padding_mode])
        return padded if self.kind == "conv2d" else padded[:, :, None, :]


def _gather_patches(padded: torch.Tensor, chosen: torch.Tensor, output_size: tuple[int, int], kernel, dilation,
                    stride) -> torch.Tensor:
    """The columns `chosen` of F.unfold(padded, ...) with its images side by side, (C kh kw, chosen), by indexing:
    samples are image-major, then output positions row by row; features channel-major, then kernel row, then
    kernel column."""
    height, width = output_size
    (kh, kw), (dy, dx), (sy, sx) = kernel, dilation, stride
    image, position = chosen // (height * width), chosen % (height * width)
    arange = torch.arange
    channel = arange(padded.shape[1], device=chosen.device).repeat_interleave(kh * kw)
    ky = arange(kh, device=chosen.device).repeat_interleave(kw).repeat(padded.shape[1])
    kx = arange(kw, device=chosen.device).repeat(padded.shape[1] * kh)
    rows = (ky * dy)[:, None] + (position // width * sy)[None, :]
    columns = (kx * dx)[:, None] + (position % width * sx)[None, :]
    return padded[image[None, :], channel[:, None], rows, columns]


_PAD_MODES = {"zeros": "constant", "reflect": "reflect", "replicate": "replicate", "circular": "circular"}


def _pad_widths(conv: nn.Conv2d | nn.Conv1d) -> tuple[int, ...]:
    """(left, right[, top, bottom]) padding as F.pad takes it (last dimension first), for int, tuple, "valid"
    and "same" padding."""
    if conv.padding == "valid":
        return (0,) * (2 * len(conv.kernel_size))
    widths = []
    if conv.padding == "same":  # torch puts the odd pixel on the right/bottom
        for dilation, size in zip(reversed(conv.dilation), reversed(conv.kernel_size), strict=True):
            total = dilation * (size - 1)
            widths += [total // 2, total - total // 2]
        return tuple(widths)
    for pad in reversed(conv.padding):
        widths += [pad, pad]
    return tuple(widths)


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
                raise ValueError(f"{argument}: {selector.__name__} is not a trimmable type (nn.Linear, nn.Conv2d, "
                                 "nn.Conv1d)")
        elif isinstance(selector, str):
            try:
                re.compile(selector)
            except re.error as error:
                raise ValueError(f"{argument}: {selector!r} is not a valid regular expression ({error})") from None
        else:
            raise ValueError(f"{argument}: expected layer names, regexes or module types, got {selector!r}")
    return selectors


def select_layers(model: nn.Module, layers=None, exclude=None) -> list[Layer]:
    """The nn.Linear, nn.Conv2d and nn.Conv1d modules of `model` that `layers` selects (all of them when None) and
    `exclude` does not. Each selector is a module type, an exact name, or a regex matched against the whole
    name; a selector that matches no trimmable layer is an error (a typo should not trim nothing silently)."""
    include, leave_out = _check_selectors("layers", layers), _check_selectors("exclude", exclude)
    candidates = [(name, module) for name, module in model.named_modules() if layer_kind(module)]
    for argument, selectors in (("layers", include), ("exclude", leave_out)):
        for selector in selectors:
            if not any(_matches(name, module, selector) for name, module in candidates):
                shown = selector.__name__ if isinstance(selector, type) else repr(selector)
                raise ValueError(f"{argument}: {shown} matches no nn.Linear, nn.Conv2d or nn.Conv1d layer of the model "
                                 f"(its layers: {[name for name, _ in candidates]})")
    chosen = [
        Layer(name, module) for name, module in candidates
        if (not include or any(_matches(name, module, s) for s in include))
        and not any(_matches(name, module, s) for s in leave_out)
    ]
    if not chosen:
        raise ValueError("model: no trimmable layer selected (nettrim trims nn.Linear, nn.Conv2d and nn.Conv1d "
                         f"modules; the model has {len(candidates)} and layers/exclude leave none)")
    return chosen
