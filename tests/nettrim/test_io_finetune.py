"""Saving and loading trimmed models (safetensors), and masked fine-tuning."""

import copy
import json
import math
import re

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

import nettrim
from nettrim.finetune import TEMPERATURE, distillation_loss
from nettrim.io import read_metadata
from networks import images, inputs, mlp, small_cnn


@pytest.fixture(scope="module")
def trimmed_cnn():
    model, x = small_cnn(), images(16)
    trimmed, report = nettrim.trim(model, x, epsilon=0.1, max_samples=400, progress=False)
    return x, trimmed, report


def test_save_load_round_trip_gives_identical_outputs(trimmed_cnn, tmp_path):
    x, trimmed, report = trimmed_cnn
    path = nettrim.save(trimmed, tmp_path / "cnn.safetensors", report)
    assert json.loads(read_metadata(path)["identity_modules"]) == ["bn1", "bn2"]
    fresh = small_cnn(seed=5)  # the original architecture, other weights, BatchNorms in place
    loaded, loaded_report = nettrim.load(path, fresh)
    assert isinstance(loaded.bn1, nn.Identity) and isinstance(fresh.bn1, nn.BatchNorm2d)  # a loaded copy
    torch.testing.assert_close(loaded(x), trimmed(x), rtol=0, atol=0)
    assert loaded_report.to_dict() == report.to_dict()
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_save_without_report_and_load_errors(tmp_path):
    model = mlp()
    path = nettrim.save(model, tmp_path / "m.safetensors")
    assert nettrim.load(path, mlp(seed=1))[1] is None
    with pytest.raises(FileNotFoundError, match="path"):
        nettrim.load(tmp_path / "missing.safetensors", mlp())
    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not written by nettrim.save"):
        nettrim.load(tmp_path / "other.safetensors", mlp())
    trimmed = nettrim.trim(small_cnn(), images(8), max_samples=200, progress=False)[0]
    nettrim.save(trimmed, tmp_path / "cnn.safetensors")
    with pytest.raises(ValueError, match="model: has no module 'bn1'"):
        nettrim.load(tmp_path / "cnn.safetensors", mlp())
    whole = path.read_bytes()
    for cut in (len(whole) // 2, 12):  # the tensors cut off, then the header too
        truncated = tmp_path / f"cut-{cut}.safetensors"
        truncated.write_bytes(whole[:cut])
        with pytest.raises(ValueError, match=rf"path: {re.escape(str(truncated))} is not a readable safetensors"):
            nettrim.load(truncated, mlp())


def test_finetuning_keeps_every_zero_and_plain_parameters(trimmed_cnn):
    x, trimmed, _ = trimmed_cnn
    model = copy.deepcopy(trimmed)
    zeros = {name: parameter == 0 for name, parameter in model.named_parameters()}
    assert sum(int(mask.sum()) for mask in zeros.values()) > 0
    labels = torch.randint(0, 3, (len(x),), generator=torch.Generator().manual_seed(0))
    loader = [(x[:8], labels[:8]), (x[8:], labels[8:])]
    before = nn.functional.cross_entropy(model(x), labels).item()
    nettrim.finetune(model, loader, epochs=5, lr=1e-2, progress=False)
    after = nn.functional.cross_entropy(model(x), labels).item()
    assert after < before
    for name, parameter in model.named_parameters():
        assert torch.all(parameter[zeros[name]] == 0), name
        changed = ~zeros[name] & (parameter != trimmed.get_parameter(name))
        assert changed.any(), name  # the nonzeros did train
    assert all(type(p) is nn.Parameter for p in model.parameters())
    assert not model._forward_pre_hooks and not any(m._forward_pre_hooks for m in model.modules())
    assert sorted(model.state_dict()) == sorted(trimmed.state_dict())  # no weight_orig / weight_mask
    assert model.training is False


def test_the_distillation_loss_is_the_tempered_kl_divergence():
    generator = torch.Generator().manual_seed(0)
    logits, teacher_logits = torch.randn(5, 4, generator=generator), torch.randn(5, 4, generator=generator)
    T = TEMPERATURE
    p, q = (torch.softmax(teacher_logits / T, 1), torch.softmax(logits / T, 1))
    expected = T ** 2 * float((p * (p.log() - q.log())).sum(1).mean())
    assert float(distillation_loss(logits, teacher_logits)) == pytest.approx(expected)
    assert float(distillation_loss(logits, logits)) == pytest.approx(0.0, abs=1e-6)


def test_finetuning_with_a_teacher_pulls_the_outputs_towards_it_and_leaves_the_teacher_alone(trimmed_cnn):
    x, trimmed, _ = trimmed_cnn
    teacher = small_cnn(seed=7).train()  # not the model `trimmed` came from: far from it
    before_teacher = copy.deepcopy(teacher.state_dict())
    labels = torch.zeros(len(x), dtype=torch.long)  # labels that disagree with the teacher: distill=1 ignores them
    loader = [(x[:8], labels[:8]), (x[8:], labels[8:])]
    model = copy.deepcopy(trimmed)
    zeros = {name: parameter == 0 for name, parameter in model.named_parameters()}
    with torch.no_grad():
        target = teacher.eval()(x)
    teacher.train()

    def gap(candidate):
        with torch.no_grad():
            return float(distillation_loss(candidate(x), target))

    before = gap(model)
    nettrim.finetune(model, loader, epochs=10, lr=1e-2, teacher=teacher, distill=1.0, progress=False)
    assert gap(model) < 0.5 * before
    assert teacher.training and all(torch.equal(value, before_teacher[key])
                                    for key, value in teacher.state_dict().items())
    assert all(parameter.grad is None for parameter in teacher.parameters())
    for name, parameter in model.named_parameters():
        assert torch.all(parameter[zeros[name]] == 0), name


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(epochs=-1), "epochs"), (dict(lr=0.0), "lr"), (dict(distill=1.5), "distill"),
    (dict(distill=True), "distill"), (dict(teacher="dense.pt"), "teacher")])
def test_finetune_refuses_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        nettrim.finetune(mlp(), [(inputs(4), torch.zeros(4, dtype=torch.long))], **kwargs)


def test_the_sparse_format_stores_the_trimmed_weights_in_csr_and_loads_the_same_model(trimmed_cnn, tmp_path):
    x, trimmed, report = trimmed_cnn
    dense = nettrim.save(trimmed, tmp_path / "dense.safetensors", report)
    sparse = nettrim.save(trimmed, tmp_path / "sparse.safetensors", report, format="sparse")
    loaded, loaded_report = nettrim.load(sparse, small_cnn(seed=5))
    torch.testing.assert_close(loaded(x), trimmed(x), rtol=0, atol=0)
    assert loaded_report.to_dict() == report.to_dict()
    stored = json.loads(read_metadata(sparse)["sparse"])
    kept = {row.name: row.nonzeros_after / row.nonzeros_before for row in report.layers}
    assert {f"{name}.weight" for name, fraction in kept.items() if fraction < 0.5} <= set(stored)
    with safe_open(str(sparse), framework="pt") as handle:
        for key, shape in stored.items():
            weight = trimmed.get_parameter(key)
            parts = [handle.get_tensor(f"{key}::csr_{part}") for part in ("values", "columns", "rows")]
            assert parts[0].numel() == int(torch.count_nonzero(weight)) and list(weight.shape) == shape
            assert parts[1].dtype == (torch.uint8 if math.prod(shape[1:]) <= 256 else torch.uint16)
            assert sum(part.numel() * part.element_size() for part in parts) < weight.numel() * weight.element_size()
    assert sparse.stat().st_size < dense.stat().st_size


def test_the_sparse_format_keeps_dense_weights_dense_and_loads_resized_models(tmp_path):
    model = mlp()
    path = nettrim.save(model, tmp_path / "m.safetensors", format="sparse")
    assert json.loads(read_metadata(path)["sparse"]) == {}  # nothing is smaller in CSR form
    torch.testing.assert_close(nettrim.load(path, mlp(seed=1))[0](inputs(4)), model(inputs(4)), rtol=0, atol=0)
    smaller, _ = nettrim.trim(mlp(), inputs(64), epsilon=0.3, structure="neurons", progress=False)
    path = nettrim.save(smaller, tmp_path / "smaller.safetensors", format="sparse")
    loaded, _ = nettrim.load(path, mlp(seed=1))
    torch.testing.assert_close(loaded(inputs(4)), smaller(inputs(4)), rtol=0, atol=0)
    with pytest.raises(ValueError, match="format must be one of"):
        nettrim.save(model, tmp_path / "x.safetensors", format="csr")


@pytest.mark.parametrize("structure", ["weights", "neurons"])
def test_loading_into_another_architecture_is_refused_by_name(tmp_path, structure):
    """A file saved from a 12-16-10-4 model does not load into a 12-20-10-4 one: a weight trim resized nothing,
    and a neuron trim was made from 16 neurons, not 20 (the file's architecture came back silently)."""
    model, x = mlp(), inputs(200)
    trimmed, report = nettrim.trim(model, x, epsilon=0.2, structure=structure, progress=False)
    nettrim.save(trimmed, tmp_path / "trimmed.safetensors", report)
    loaded, _ = nettrim.load(tmp_path / "trimmed.safetensors", mlp(seed=5))  # the same architecture loads
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), trimmed(x))
    message = (r"model: 0\.(weight|bias) has shape" if structure == "weights"
               else "model: layer '0' has 20 outputs, but 16")
    with pytest.raises(ValueError, match=message):
        nettrim.load(tmp_path / "trimmed.safetensors", mlp(sizes=(12, 20, 10, 4)))


def _edited(path, tmp_path, **changes):
    """A copy of the file at `path` with its metadata entries `changes` (None: removed)."""
    with safe_open(str(path), framework="pt") as handle:
        tensors, metadata = {key: handle.get_tensor(key) for key in handle.keys()}, dict(handle.metadata())
    metadata = {key: value for key, value in {**metadata, **changes}.items() if value is not None}
    save_file(tensors, tmp_path / "edited.safetensors", metadata=metadata)
    return tmp_path / "edited.safetensors"


def test_a_file_with_edited_metadata_is_refused_by_name(tmp_path):
    """Each damaged entry gives a ValueError naming the file and the entry (they gave raw JSONDecodeError,
    TypeError, RuntimeError, IndexError and KeyError), and an edited width is not silently ignored; the model
    passed in is untouched."""
    model, x = mlp(seed=1, sizes=(12, 40, 24, 4)), inputs(200)
    trimmed, report = nettrim.trim(model, x, epsilon=0.5, progress=False)
    sparse = nettrim.save(trimmed, tmp_path / "sparse.safetensors", report, format="sparse")
    shapes = json.loads(read_metadata(sparse)["sparse"])
    assert "2.weight" in shapes
    smaller, small_report = nettrim.trim(model, x, epsilon=0.3, structure="neurons", progress=False)
    narrow = nettrim.save(smaller, tmp_path / "narrow.safetensors", small_report)
    widths = json.loads(read_metadata(narrow)["widths"])
    before = copy.deepcopy(model.state_dict())
    cases = [
        (sparse, {"sparse": "{oops"}, "'sparse' is not JSON"),
        (sparse, {"sparse": json.dumps({"2.weight": ["a", 3]})}, "'sparse' has a shape"),
        (sparse, {"sparse": json.dumps({"2.weight": 5})}, "'sparse' has a shape"),
        (sparse, {"sparse": json.dumps({**shapes, "2.weight": [29, 40]})}, r"parts of '2\.weight' do not make"),
        (sparse, {"sparse": json.dumps({**shapes, "2.weight": [24, 2]})}, r"parts of '2\.weight' do not make"),
        (sparse, {"sparse": json.dumps({**shapes, "9.weight": [3, 3]})}, r"'sparse' names '9\.weight'"),
        (sparse, {"report": json.dumps({"mode": 3})}, "'report' cannot be read"),
        (sparse, {"identity_modules": "[3]"}, "'identity_modules' has a name"),
        (narrow, {"widths": "{{"}, "'widths' is not JSON"),
        (narrow, {"widths": json.dumps({**widths, "0": {"in_features": 15, "out_features": 38}})},
         "'widths' gives '0' in_features = 15, but its saved weights have 12"),
        (narrow, {"widths": json.dumps({**widths, "0": {"colour": 3}})}, "'widths' of '0' is not"),
        (narrow, {"gathered_inputs": "[1]"}, "'gathered_inputs' is not a JSON object"),
        (narrow, {"gathered_inputs": json.dumps({"2": "x"})}, "'gathered_inputs' has a dimension"),
    ]
    for path, changes, message in cases:
        with pytest.raises(ValueError, match=f"edited.safetensors.*{message}"):
            nettrim.load(_edited(path, tmp_path, **changes), model)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)
