"""Adapters: unfolded convs and linear layers as matrix products, weight round trips, layer selection."""

import numpy as np
import pytest
import torch
from torch import nn

from nettrim.layers import Layer, select_layers
from networks import small_cnn


def _layer_product(layer: Layer, x: torch.Tensor) -> np.ndarray:
    """W^T X on the layer's samples (with the ones row for the bias), as (samples, outputs)."""
    features = layer.features(x).numpy()
    if layer.has_bias:
        features = np.hstack([features, np.ones((len(features), 1))])
    return features @ layer.weight_matrix()


@pytest.mark.parametrize("options", [
    dict(kernel_size=3),
    dict(kernel_size=3, padding=1, bias=False),
    dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 2), dilation=(1, 2)),
    dict(kernel_size=3, padding="same", dilation=2),
    pytest.param(dict(kernel_size=(4, 3), padding="same"),  # torch warns that it pads a copy: not our concern
                 marks=pytest.mark.filterwarnings("ignore:Using padding='same'")),
    dict(kernel_size=2, padding="valid", stride=3),
    dict(kernel_size=3, padding=2, padding_mode="reflect"),
    dict(kernel_size=3, padding=1, padding_mode="circular", stride=2),
    dict(kernel_size=3, padding=1, padding_mode="replicate"),
])
def test_unfolded_conv_equals_the_conv_forward(options):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, **options).double()
    x = torch.randn(2, 3, 9, 10, dtype=torch.float64)
    expected = conv(x)  # (B, out, H', W')
    product = _layer_product(Layer("conv", conv), x)
    expected_rows = expected.permute(0, 2, 3, 1).reshape(-1, 5).detach().numpy()
    np.testing.assert_allclose(product, expected_rows, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("options", [
    dict(kernel_size=3, padding=1),
    dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 2), dilation=(1, 2)),
    dict(kernel_size=3, padding=1, padding_mode="circular", stride=2),
    dict(kernel_size=2, padding="valid", stride=3),
])
@pytest.mark.parametrize("conv1d", [False, True])
def test_chosen_patches_are_the_rows_of_the_unfolded_input(options, conv1d):
    """Layer.features with `choose` gathers exactly the chosen rows of the unfolded patches, of every image."""
    torch.manual_seed(0)
    if conv1d:
        options = {key: value[-1] if isinstance(value, tuple) else value for key, value in options.items()}
    conv = (nn.Conv1d if conv1d else nn.Conv2d)(3, 5, **options)
    x = torch.randn(*((4, 3, 11) if conv1d else (4, 3, 9, 10)))
    layer = Layer("conv", conv)
    every = layer.features(x)
    counts, chosen = [], torch.tensor([0, 3, len(every) // 2, len(every) - 1])
    gathered = layer.features(x, lambda count: counts.append(count) or chosen)
    assert counts == [len(every)]
    torch.testing.assert_close(gathered, every[chosen], rtol=0, atol=0)
    torch.testing.assert_close(layer.features(x, lambda count: None), every, rtol=0, atol=0)


def test_linear_features_flatten_leading_dimensions():
    torch.manual_seed(0)
    linear = nn.Linear(6, 4).double()
    x = torch.randn(3, 5, 6, dtype=torch.float64)
    product = _layer_product(Layer("fc", linear), x)
    np.testing.assert_allclose(product, linear(x).reshape(-1, 4).detach().numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("module", [nn.Linear(5, 3), nn.Linear(5, 3, bias=False), nn.Conv2d(2, 3, 3),
                                    nn.Conv2d(2, 3, (2, 3), bias=False)])
def test_weight_matrix_round_trip(module):
    layer = Layer("layer", module)
    W = layer.weight_matrix()
    rows = module.weight[0].numel() + (module.bias is not None)
    assert W.shape == (rows, module.weight.shape[0])
    U = np.arange(W.size, dtype=np.float64).reshape(W.shape)
    layer.set_weight_matrix(U)
    np.testing.assert_array_equal(layer.weight_matrix(), U.astype(np.float32).astype(np.float64))
    assert module.weight.dtype == torch.float32


def test_select_layers_by_type_name_regex_and_exclude():
    model = small_cnn()
    assert [layer.name for layer in select_layers(model)] == ["conv1", "conv2", "fc1", "fc2"]
    assert [layer.name for layer in select_layers(model, nn.Conv2d)] == ["conv1", "conv2"]
    assert [layer.name for layer in select_layers(model, ["fc1", "conv.*"])] == ["conv1", "conv2", "fc1"]
    assert [layer.name for layer in select_layers(model, exclude="fc2")] == ["conv1", "conv2", "fc1"]


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(layers="fc9"), "layers: 'fc9' matches no"),
    (dict(exclude="nothing"), "exclude: 'nothing' matches no"),
    (dict(layers=nn.ReLU), "layers: ReLU is not a trimmable type"),
    (dict(layers="("), "not a valid regular expression"),
    (dict(layers=[3]), "layers: expected layer names"),
    (dict(exclude=".*"), "model: no trimmable layer selected"),
])
def test_select_layers_refuses_bad_selectors(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        select_layers(small_cnn(), **kwargs)


def test_model_without_trimmable_layers_is_refused():
    with pytest.raises(ValueError, match="model: no trimmable layer"):
        select_layers(nn.Sequential(nn.ReLU(), nn.Flatten()))
