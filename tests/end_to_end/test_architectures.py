"""The architectures users bring, trimmed end to end with default selections: torchvision's resnet18,
mobilenet_v3_small (depthwise convs, squeeze-and-excitation, hardswish) and squeezenet1_1 with random weights,
and a TransformerEncoder block (MultiheadAttention uses out_proj functionally: skipped with its reason).

Tiny inputs, few samples and few iterations keep CI fast; neurons that do not converge keep their original
weights, which keep their budget, so every layer must keep its program whatever the iterations."""

import warnings

import pytest
import torch
from torch import nn
from torchvision_models import models

import nettrim
from nettrim.layers import TRIMMABLE

FIT_RTOL, VIOLATION_TOL = 1e-3, 1e-5
#: The warnings a trim with few iterations may give: dense fallbacks, torch.fx not seeing inside a module, and
#: layers left as they are. Anything else fails the test.
EXPECTED = ("neurons kept their original", "torch.fx sees", "nettrim leaves these layers as they are")


def _trim(model, x, **options):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trimmed, report = nettrim.trim(model, x, progress=False, **options)
    unexpected = [str(w.message) for w in caught if not any(text in str(w.message) for text in EXPECTED)]
    assert not unexpected
    return trimmed, report


def _check_every_layer_accounted_for(model, trimmed, report, x):
    weighted = {name for name, module in model.named_modules() if isinstance(module, TRIMMABLE)}
    rows = {row.name for row in report.layers}
    assert rows | set(report.not_trimmed) == weighted and not rows & set(report.not_trimmed)
    for row in report.layers:
        assert row.fit_ratio <= 1 + FIT_RTOL and row.violation <= VIOLATION_TOL, row.name
    with torch.no_grad():
        assert torch.isfinite(trimmed(x)).all()


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "squeezenet1_1"])
def test_torchvision_classifiers_are_trimmed_end_to_end(name):
    torch.manual_seed(0)
    model = getattr(models(), name)(weights=None, num_classes=10).eval()
    x = torch.randn(4, 3, 32, 32)
    trimmed, report = _trim(model, x, max_samples=200, max_iter=30)
    _check_every_layer_accounted_for(model, trimmed, report, x)
    assert not report.not_trimmed and report.kept < 1
    if name == "mobilenet_v3_small":  # depthwise convs included
        assert any(row.groups > 1 and row.groups == row.shape[1] for row in report.layers)


def test_a_transformer_block_is_trimmed_and_attention_projections_are_skipped_with_the_reason():
    torch.manual_seed(0)
    block = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, activation="gelu", batch_first=True)
    model = nn.Sequential(nn.Linear(16, 32), nn.TransformerEncoder(block, 2, enable_nested_tensor=False),
                          nn.Linear(32, 5)).eval()
    x = torch.randn(12, 8, 16)
    trimmed, report = _trim(model, x)
    _check_every_layer_accounted_for(model, trimmed, report, x)
    skipped = {"1.layers.0.self_attn.out_proj", "1.layers.1.self_attn.out_proj"}
    assert set(report.not_trimmed) == skipped
    assert all("used functionally" in reason for reason in report.not_trimmed.values())
    assert all(row.status == "optimal" for row in report.layers) and "not trimmed: 1.layers.0" in str(report)
    with pytest.raises(ValueError, match=r"layers: \['1.layers.0.self_attn.out_proj'\] never called"), \
            pytest.warns(UserWarning, match="torch.fx sees"):
        nettrim.trim(model, x, layers=["1.layers.0.self_attn.out_proj", "0"], progress=False)
