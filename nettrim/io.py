"""Save a trimmed model's weights to safetensors (with the report as metadata) and load them back.

The file holds the state dict, the nettrim version, the report as JSON, and the names of the modules that are
nn.Identity in the trimmed model (the BatchNorms folded into the layer before them), so that the weights load
into a freshly built model of the original architecture: `load` replaces those modules first. A model made
smaller by neuron trimming is saved with its widths (each layer's and BatchNorm's sizes) and the names of the layers
that gather the inputs they read (neurons.GatheredInputs, whose index is a buffer), and `load` wraps and resizes the
freshly built model's modules to match before loading: no pickle, no code in the file.

format="sparse" stores each Linear and conv weight W (out x everything else, as a matrix) in compressed sparse
row form when that is smaller: its nonzero values in W's dtype, their column indices and the row offsets, each
index array in the smallest unsigned dtype that holds it (uint8, uint16 or uint32), under the keys
"<key>::csr_values", "<key>::csr_columns", "<key>::csr_rows", with W's shape in the metadata; `load` makes them
dense again, so the loaded model is the same dense model.
"""

from __future__ import annotations

import copy
import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model, save_file, save_model
from torch import nn

from . import __version__
from .layers import layer_kind
from .neurons import GatheredInputs
from .report import Report

FORMATS = ("dense", "sparse")
CSR_PARTS = ("values", "columns", "rows")


def save(model: nn.Module, path: str | os.PathLike, report: Report | None = None, *, format: str = "dense") -> Path:
    """Write `model`'s weights to `path` (safetensors), its layers' weights in CSR form with format="sparse"
    (module docstring). The file appears complete or not at all."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    path = Path(path)
    identity = [name for name, module in model.named_modules() if isinstance(module, nn.Identity) and name]
    gathered = {name: module.dim for name, module in model.named_modules() if isinstance(module, GatheredInputs)}
    metadata = {"format": "pt", "nettrim_version": __version__, "identity_modules": json.dumps(identity),
                "widths": json.dumps(widths(model)), "gathered_inputs": json.dumps(gathered)}
    if report is not None:
        metadata["report"] = report.to_json()
    if format == "dense":
        write_atomically(path, lambda temporary: save_model(model, temporary, metadata=metadata))
        return path
    tensors, shapes = sparse_state(model)
    metadata["sparse"] = json.dumps(shapes)
    write_atomically(path, lambda temporary: save_file(tensors, temporary, metadata=metadata))
    return path


def sparse_state(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, list[int]]]:
    """(tensors, shapes): the state dict with every layer weight that is smaller in CSR form replaced by its three
    CSR arrays, and those weights' shapes."""
    layer_weights = {f"{name}.weight" for name, module in model.named_modules() if layer_kind(module)}
    tensors, shapes = {}, {}
    for key, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu()
        parts = csr_parts(tensor) if key in layer_weights else None
        if parts is None:
            tensors[key] = tensor.clone()  # no shared storage, which save_file refuses
            continue
        tensors.update({f"{key}::csr_{part}": array for part, array in zip(CSR_PARTS, parts, strict=True)})
        shapes[key] = list(tensor.shape)
    return tensors, shapes


def csr_parts(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """(values, column indices, row offsets) of the weight as an (out, rest) matrix, indices in the smallest
    unsigned dtype; None when they take no fewer bytes than the dense weight."""
    matrix = weight.reshape(weight.shape[0], -1)
    nonzero = matrix != 0
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(nonzero.sum(dim=1), dim=0)])
    parts = (matrix[nonzero], _smallest_unsigned(torch.nonzero(nonzero)[:, 1], matrix.shape[1]),
             _smallest_unsigned(offsets, int(offsets[-1])))
    if sum(part.numel() * part.element_size() for part in parts) >= matrix.numel() * matrix.element_size():
        return None
    return parts


def _smallest_unsigned(indices: torch.Tensor, largest: int) -> torch.Tensor:
    dtype = next(dtype for dtype in (np.uint8, np.uint16, np.uint32, np.uint64) if largest <= np.iinfo(dtype).max)
    return torch.from_numpy(indices.numpy().astype(dtype))


def dense_state(handle, shapes: dict[str, list[int]], path: Path) -> dict[str, torch.Tensor]:
    """The state dict of a file opened with safe_open: its dense tensors, and its CSR weights made dense (a
    ValueError naming the weight and the file where its parts and its shape in the metadata disagree)."""
    state = {key: handle.get_tensor(key) for key in handle.keys() if "::csr_" not in key}
    stored = set(handle.keys())
    for key, shape in shapes.items():
        if not all(f"{key}::csr_{part}" in stored for part in CSR_PARTS):
            raise ValueError(f"path: {path} has damaged nettrim metadata: 'sparse' names {key!r}, whose compressed "
                             "parts the file does not hold")
        values, columns, rows = (handle.get_tensor(f"{key}::csr_{part}") for part in CSR_PARTS)
        if not _csr_fits(values, columns.to(torch.int64), rows.to(torch.int64), shape):
            raise ValueError(f"path: {path}: the compressed parts of {key!r} do not make a matrix of the shape "
                             f"{shape} its metadata gives (an edited or damaged file)")
        matrix = values.new_zeros((shape[0], math.prod(shape[1:])))
        row_of_each = torch.repeat_interleave(torch.arange(shape[0]), torch.diff(rows.to(torch.int64)))
        matrix[row_of_each, columns.to(torch.int64)] = values
        state[key] = matrix.reshape(shape)
    return state


def _csr_fits(values: torch.Tensor, columns: torch.Tensor, rows: torch.Tensor, shape: list[int]) -> bool:
    """Do CSR parts make a matrix of `shape` (rows x the product of the rest)? One offset per row and one more,
    from 0 and never decreasing, to one value and one column index per entry, each index within the columns."""
    return (rows.ndim == values.ndim == columns.ndim == 1 and len(rows) == shape[0] + 1 and int(rows[0]) == 0
            and bool(torch.all(torch.diff(rows) >= 0)) and int(rows[-1]) == len(values) == len(columns)
            and (not len(columns) or int(columns.max()) < math.prod(shape[1:])))


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


def _saved_module(model: nn.Module, name: str) -> nn.Module:
    """model's module `name`, which the saved model has; a ValueError if `model` lacks it."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise ValueError(f"model: has no module {name!r}, which the saved model has; is it the same "
                         "architecture?") from None


def resize(model: nn.Module, sizes: dict[str, dict[str, int]], shapes: dict[str, list[int]]) -> None:
    """Give `model`'s modules the widths `sizes` and its parameters and buffers the `shapes` (by state-dict key),
    uninitialized: the weights to load fill them."""
    for name, attributes in sizes.items():
        module = _saved_module(model, name)
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
    """Weights saved by `save` (either format), loaded into a copy of `model`: the trimmed architecture or the
    original one (modules saved as nn.Identity, i.e. folded BatchNorms, are replaced, layers that gained a bias from the
    folding get one, and modules that neuron trimming made smaller are resized to the saved widths). `model`
    itself is not modified. Returns (loaded model, report or None). A file whose metadata was edited or damaged (an
    entry that is not the JSON it must be, compressed parts that do not make their weight's shape, a width its
    weights do not have) is refused with a ValueError naming the entry and the file.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"path: {path} does not exist")
    metadata = read_metadata(path)
    if "nettrim_version" not in metadata:
        raise ValueError(f"path: {path} was not written by nettrim.save (no nettrim metadata)")
    fields = _parsed(metadata, path)
    model = copy.deepcopy(model)
    for name in fields["identity_modules"]:
        _saved_module(model, name)
        model.set_submodule(name, nn.Identity())
    sparse = fields["sparse"]
    try:
        with safe_open(str(path), framework="pt") as handle:
            state = dense_state(handle, sparse, path) if sparse else None
            shapes = {key: handle.get_slice(key).get_shape() for key in handle.keys() if "::csr_" not in key}
    except SafetensorError as error:
        raise ValueError(f"path: {path} is not a readable safetensors file (truncated or corrupt?): {error}") from None
    shapes.update(sparse)
    report = fields["report"]
    _check_architecture(model, report, shapes, path)
    for name, dim in fields["gathered_inputs"].items():
        layer = _saved_module(model, name)
        model.set_submodule(name, GatheredInputs(layer, torch.zeros(1, dtype=torch.int64), dim))  # resized next
    resize(model, fields["widths"], shapes)
    for name, module in model.named_modules():
        if layer_kind(module) and module.bias is None and f"{name}.bias" in shapes:
            module.bias = nn.Parameter(module.weight.new_zeros(module.weight.shape[0]))
    try:
        if state is None:
            load_model(model, str(path), strict=True)
        else:
            model.load_state_dict(state, strict=True)
    except SafetensorError as error:
        raise ValueError(f"path: {path} is not a readable safetensors file (truncated or corrupt?): {error}") from None
    _check_widths(model, fields["widths"], path)
    return model, report


#: The JSON metadata `load` reads: its type, and its value when the file has none.
FIELDS = {"identity_modules": (list, []), "sparse": (dict, {}), "widths": (dict, {}), "gathered_inputs": (dict, {})}


def _parsed(metadata: dict[str, str], path: Path) -> dict:
    """The file's nettrim metadata, parsed and checked (FIELDS, and the report); a damaged entry is a ValueError
    that names it and the file."""
    def damaged(field: str, what: str) -> ValueError:
        return ValueError(f"path: {path} has damaged nettrim metadata: {field!r} {what}")

    fields = {}
    for field, (kind, default) in FIELDS.items():
        try:
            fields[field] = json.loads(metadata[field]) if field in metadata else default
        except json.JSONDecodeError as error:
            raise damaged(field, f"is not JSON ({error})") from None
        if not isinstance(fields[field], kind):
            raise damaged(field, f"is not a JSON {'list' if kind is list else 'object'}")
    if not all(isinstance(name, str) for name in fields["identity_modules"]):
        raise damaged("identity_modules", "has a name that is not a string")
    if not all(isinstance(shape, list) and len(shape) >= 2 and _sizes(shape) for shape in fields["sparse"].values()):
        raise damaged("sparse", "has a shape that is not a list of at least two positive ints")
    known = {attribute for names in SIZE_ATTRIBUTES.values() for attribute in names}
    for name, attributes in fields["widths"].items():
        if not isinstance(attributes, dict) or not set(attributes) <= known or not _sizes(attributes.values()):
            raise damaged("widths", f"of {name!r} is not {{size attribute: positive int}} ({sorted(known)})")
    if not all(isinstance(dim, int) and not isinstance(dim, bool) for dim in fields["gathered_inputs"].values()):
        raise damaged("gathered_inputs", "has a dimension that is not an int")
    try:
        fields["report"] = Report.from_dict(json.loads(metadata["report"])) if "report" in metadata else None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise damaged("report", f"cannot be read ({type(error).__name__}: {error})") from None
    return fields


def _sizes(values) -> bool:
    """Are `values` all positive ints (not bools)?"""
    return all(isinstance(value, int) and not isinstance(value, bool) and value > 0 for value in values)


def _check_widths(model: nn.Module, sizes: dict[str, dict[str, int]], path: Path) -> None:
    """Every saved width must be the one the loaded weights have (an edited entry would leave a module that says
    one size and computes with another): a ValueError naming the module and the file."""
    for name, attributes in sizes.items():
        actual = _tensor_widths(model.get_submodule(name))
        for attribute, value in attributes.items():
            if actual.get(attribute, value) != value:
                raise ValueError(f"path: {path} has damaged nettrim metadata: 'widths' gives {name!r} "
                                 f"{attribute} = {value}, but its saved weights have {actual[attribute]}")


def _tensor_widths(module: nn.Module) -> dict[str, int]:
    """The sizes (SIZE_ATTRIBUTES' names) that a Linear, conv or BatchNorm module's tensors have."""
    if isinstance(module, nn.Linear):
        return {"in_features": module.weight.shape[1], "out_features": module.weight.shape[0]}
    if isinstance(module, nn.modules.conv._ConvNd):
        first, second = module.weight.shape[:2]
        inputs, outputs = (first, second * module.groups) if module.transposed else (second * module.groups, first)
        return {"in_channels": inputs, "out_channels": outputs}
    if isinstance(module, nn.modules.batchnorm._NormBase):
        tensor = module.running_mean if module.running_mean is not None else module.weight
        return {} if tensor is None else {"num_features": tensor.shape[0]}
    return {}




def _check_architecture(model: nn.Module, report: Report | None, shapes: dict[str, list[int]], path: Path) -> None:
    """Refuse a `model` of another architecture than the file's (a ValueError naming the tensor or layer): with a
    report of a weight trim, every saved tensor the model has must have its shape (nothing was resized); with one
    of a neuron trim, every trimmed layer must have the width it had before the trim (width_before). A file
    without a report is resized to its shapes, as it must be for a neuron trim."""
    if report is None:
        return
    if report.structure != "neurons":
        state = model.state_dict()
        for key, shape in shapes.items():
            if key in state and list(state[key].shape) != list(shape):
                raise ValueError(f"model: {key} has shape {list(state[key].shape)} but {list(shape)} in {path}; load "
                                 "the file into the architecture it was saved from")
        return
    for row in report.layers:
        width = _saved_module(model, row.name).weight.shape[0]
        if row.width_before is not None and width != row.width_before:
            raise ValueError(f"model: layer {row.name!r} has {width} outputs, but {row.width_before} in the model "
                             f"{path} was trimmed from; load the file into that architecture")
