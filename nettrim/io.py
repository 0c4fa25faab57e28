"""Save a trimmed model's weights to safetensors (with the report as metadata) and load them back.

The file holds the state dict, the nettrim version, the report as JSON, and the names of the modules that are
nn.Identity in the trimmed model (the BatchNorms folded into the layer before them), so that the weights load
into a freshly built model of the original architecture: `load` replaces those modules first. A model made
smaller by neuron trimming is saved with its widths (each layer's and BatchNorm's sizes), and `load` resizes the
freshly built model's modules to them before loading: no pickle, no code in the file.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
from pathlib import Path

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model, save_model
from torch import nn

from . import __version__
from .layers import layer_kind
from .report import Report


def save(model: nn.Module, path: str | os.PathLike, report: Report | None = None) -> Path:
    """Write `model`'s weights to `path` (safetensors). The file appears complete or not at all."""
    path = Path(path)
    identity = [name for name, module in model.named_modules() if isinstance(module, nn.Identity) and name]
    metadata = {"format": "pt", "nettrim_version": __version__, "identity_modules": json.dumps(identity),
                "widths": json.dumps(widths(model))}
    if report is not None:
        metadata["report"] = report.to_json()
    write_atomically(path, lambda temporary: save_model(model, temporary, metadata=metadata))
    return path


#: The size attributes of the modules whose widths neuron trimming changes.
SIZE_ATTRIBUTES = {nn.Linear: ("in_features", "out_features"),
                   nn.modules.conv._ConvNd: ("in_channels", "out_channels"),
                   nn.modules.batchnorm._NormBase: ("num_features",)}


def widths(model: nn.Module) -> dict[str, dict[str, int]]:
    """{module name: {size attribute: value}} for the model's Linear, conv and BatchNorm modules."""
    found = {}
    for name, module in model.named_modules():
        for kind, attributes in SIZE_ATTRIBUTES.items():
            if isinstance(module, kind):
                found[name] = {attribute: int(getattr(module, attribute)) for attribute in attributes}
    return found


def resize(model: nn.Module, sizes: dict[str, dict[str, int]], shapes: dict[str, list[int]]) -> None:
    """Give `model`'s modules the widths `sizes` and its parameters and buffers the `shapes` (by state-dict key),
    uninitialized: the weights to load fill them."""
    for name, attributes in sizes.items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"model: has no module {name!r}, which the saved model has; is it the same "
                             "architecture?") from None
        for attribute, value in attributes.items():
            setattr(module, attribute, value)
    state = model.state_dict()
    for key, shape in shapes.items():
        if key not in state or list(state[key].shape) == list(shape):
            continue
        owner, _, leaf = key.rpartition(".")
        module = model.get_submodule(owner)
        empty = state[key].new_empty(shape)
        if leaf in module._parameters:
            setattr(module, leaf, nn.Parameter(empty, requires_grad=module._parameters[leaf].requires_grad))
        else:
            module._buffers[leaf] = empty


def write_atomically(path: str | os.PathLike, write) -> None:
    """write(temporary path) next to `path`, then rename it into place: the file is complete or absent."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except SafetensorError as error:
        raise ValueError(f"path: {path} is not a readable safetensors file (truncated or corrupt?): {error}") from None


def load(path: str | os.PathLike, model: nn.Module) -> tuple[nn.Module, Report | None]:
    """Weights saved by `save`, loaded into a copy of `model`: the trimmed architecture or the original one
    (modules saved as nn.Identity, i.e. folded BatchNorms, are replaced, layers that gained a bias from the
    folding get one, and modules that neuron trimming made smaller are resized to the saved widths). `model`
    itself is not modified. Returns (loaded model, report or None).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"path: {path} does not exist")
    metadata = read_metadata(path)
    if "nettrim_version" not in metadata:
        raise ValueError(f"path: {path} was not written by nettrim.save (no nettrim metadata)")
    model = copy.deepcopy(model)
    for name in json.loads(metadata.get("identity_modules", "[]")):
        try:
            model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"model: has no module {name!r}, which the saved model has; is it the same "
                             "architecture?") from None
        model.set_submodule(name, nn.Identity())
    with safe_open(str(path), framework="pt") as handle:
        saved = set(handle.keys())
        shapes = {key: handle.get_slice(key).get_shape() for key in saved}
    resize(model, json.loads(metadata.get("widths", "{}")), shapes)
    for name, module in model.named_modules():
        if layer_kind(module) and module.bias is None and f"{name}.bias" in saved:
            module.bias = nn.Parameter(module.weight.new_zeros(module.weight.shape[0]))
    try:
        load_model(model, str(path), strict=True)
    except SafetensorError as error:
        raise ValueError(f"path: {path} is not a readable safetensors file (truncated or corrupt?): {error}") from None
    report = Report.from_dict(json.loads(metadata["report"])) if "report" in metadata else None
    return model, report
