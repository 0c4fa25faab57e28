"""Neuron trimming (structure="neurons"): the surgery that removes unread neurons and channels (exactly the masked
model's outputs), the groups of rows each layer's inputs form, whole trims that return a smaller model, its
save/load round trip and its torch.jit / torch.export forms, and what is refused."""

import numpy as np
import pytest
import torch
from torch import nn

import nettrim
from nettrim import neurons, zoo
from nettrim.layers import select_layers
from networks import images, inputs, mlp, small_cnn


def _zero_reads(model):
    """SmallCNN with some inputs read with zero weights: conv1's channels 1 and 3 (by conv2), conv2's channel 2
    (its 4 x 4 features in fc1) and fc1's neurons 0 and 5 (by fc2)."""
    with torch.no_grad():
        model.conv2.weight[:, [1, 3]] = 0.0
        model.fc1.weight[:, 2 * 16:3 * 16] = 0.0
        model.fc2.weight[:, [0, 5]] = 0.0
    return model


def test_unread_channels_are_removed_from_producers_batchnorms_and_readers_with_the_same_outputs():
    model, x = _zero_reads(small_cnn()), images(16)
    expected = model(x)
    removed = neurons.remove_unread(model, select_layers(model, None, None), x)
    assert removed == {"conv1": [1, 3], "conv2": [2], "fc1": [0, 5], "fc2": []}
    assert (model.conv1.out_channels, model.bn1.num_features, model.conv2.in_channels) == (2, 2, 2)
    assert (model.conv2.out_channels, model.fc1.in_features) == (5, 5 * 16)
    assert (model.fc1.out_features, model.bn2.num_features, model.fc2.in_features) == (10, 10, 10)
    torch.testing.assert_close(model(x), expected, rtol=1e-12, atol=1e-12)


def test_a_channel_read_by_one_reader_of_a_residual_sum_stays():
    """ResNet's add couples the block's conv2 and shortcut outputs: a channel goes only when every reader of
    the sum ignores it."""
    torch.manual_seed(0)
    model, x = zoo.resnet(widths=(4, 6)).double().eval(), torch.randn(4, 1, 12, 12, dtype=torch.float64)
    order = select_layers(model, None, None)
    by_name = {layer.name: layer for layer in order}
    readers = [name for name, module in model.named_modules() if isinstance(module, nn.Conv2d)
               and module.in_channels == 4 and name not in ("0",)]
    assert len(readers) >= 2
    with torch.no_grad():
        by_name[readers[0]].module.weight[:, 1] = 0.0  # one reader of channel 1 of the sum ignores it
        for name in readers:
            by_name[name].module.weight[:, 2] = 0.0  # every reader ignores channel 2
    expected = model(x)
    neurons.remove_unread(model, order, x)
    assert all(model.get_submodule(name).in_channels == 3 for name in readers)
    torch.testing.assert_close(model(x), expected, rtol=1e-12, atol=1e-12)


def test_the_groups_of_rows_are_each_layers_inputs():
    model = small_cnn()
    sizes = neurons.input_group_sizes(model, select_layers(model, None, None), images(2))
    assert sizes == {"conv1": 9, "conv2": 9, "fc1": 16, "fc2": 1}


@pytest.mark.parametrize("budget", ["neuron", "layer"])
def test_a_neuron_trim_returns_a_smaller_model_within_its_budgets(budget):
    model, x = mlp(sizes=(12, 40, 30, 4)), inputs(400)
    small, report = nettrim.trim(model, x, epsilon=0.2, reweight=2, structure="neurons", budget=budget,
                                 progress=False)
    assert report.structure == "neurons"
    widths = [row.width_after for row in report.layers]
    assert [row.width_before for row in report.layers] == [40, 30, 4]
    assert widths[-1] == 4 and (widths[0] < 40 or widths[1] < 30)
    assert [small[i].out_features for i in (0, 2, 4)] == widths
    assert small[0].in_features == 12 - report.layers[0].inputs_unread
    assert all(row.fit_ratio <= 1 + 1e-3 for row in report.layers)
    params = report.size["params"]
    assert params["after"] == sum(parameter.numel() for parameter in small.parameters()) < params["before"]
    assert report.size["flops"]["after"] < report.size["flops"]["before"]
    assert set(report.size["latency_ms"]) == {"1", "256"}
    assert "neurons kept (output widths): 0 40 -> " in str(report)
    for parameter in model.parameters():  # the caller's model keeps its shapes
        assert parameter.shape[0] in (40, 30, 4)


def test_a_cnn_with_batchnorms_loses_channels_and_saves_and_loads_without_pickle(tmp_path):
    model, x = small_cnn(), images(64)
    small, report = nettrim.trim(model, x, epsilon=0.3, reweight=2, structure="neurons", progress=False)
    assert sum(row.width_after for row in report.layers) < sum(row.width_before for row in report.layers)
    path = nettrim.save(small, tmp_path / "small.safetensors", report)
    loaded, loaded_report = nettrim.load(path, small_cnn())
    assert loaded_report.structure == "neurons" and loaded_report.size == report.size
    assert [p.shape for p in loaded.parameters()] == [p.shape for p in small.parameters()]
    torch.testing.assert_close(loaded(x), small(x), rtol=0, atol=0)
    traced = torch.jit.trace(small, x[:2])
    torch.testing.assert_close(traced(x), small(x))
    exported = torch.export.export(small, (x[:2],))  # static shapes: the batch of 2 it was exported with
    torch.testing.assert_close(exported.module()(x[2:4]), small(x[2:4]))


def test_a_residual_model_trims_end_to_end():
    """remove_unread checks the smaller model against the trimmed one; a ResNet (adds) trims end to end."""
    torch.manual_seed(0)
    model = zoo.resnet(widths=(4, 6)).double().eval()
    x = torch.randn(8, 1, 12, 12, dtype=torch.float64)
    small, report = nettrim.trim(model, x, epsilon=0.2, structure="neurons", progress=False)
    assert [row.width_before for row in report.layers] == [layer.module.weight.shape[0]
                                                           for layer in select_layers(model, None, None)]
    assert all(isinstance(row.width_after, int) for row in report.layers)
    assert np.isfinite(small(x).detach().numpy()).all()


def test_a_channel_through_a_depthwise_conv_goes_with_it():
    """A depthwise conv's channel c reads only channel c: when the layer after it ignores channel c, the
    depthwise channel and the channel feeding it go together."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3, groups=4), nn.ReLU(),
                          nn.Conv2d(4, 5, 1), nn.ReLU(), nn.Flatten(), nn.Linear(5 * 6 * 6, 3)).double().eval()
    x = torch.randn(4, 1, 10, 10, dtype=torch.float64)
    with torch.no_grad():
        model[4].weight[:, 2] = 0.0
    expected = model(x)
    removed = neurons.remove_unread(model, select_layers(model, None, None), x)
    assert removed["0"] == [2]  # found from the first layer, through the depthwise conv
    assert (model[0].out_channels, model[2].in_channels, model[2].out_channels, model[2].groups) == (3, 3, 3, 3)
    assert model[4].in_channels == 3
    torch.testing.assert_close(model(x), expected, rtol=1e-12, atol=1e-12)


def test_bad_structures_are_refused_by_name():
    model, x = mlp(), inputs(50)
    with pytest.raises(ValueError, match="structure must be one of"):
        nettrim.trim(model, x, structure="channels", progress=False)
    with pytest.raises(ValueError, match="inplace: structure='neurons' returns a smaller model"):
        nettrim.trim(model, x, structure="neurons", inplace=True, progress=False)


def test_gathered_inputs_give_the_same_outputs_and_save_and_load(tmp_path):
    model, x = mlp(sizes=(12, 40, 30, 4)), inputs(400)
    with torch.no_grad():
        model[0].weight[:, [2, 5, 7]] = 0.0  # inputs the first layer no longer reads
    small, report = nettrim.trim(model, x, epsilon=0.2, structure="neurons", gather_inputs=True, progress=False)
    plain, _ = nettrim.trim(model, x, epsilon=0.2, structure="neurons", progress=False)
    assert isinstance(small[0], neurons.GatheredInputs)
    dropped = report.size["inputs_dropped"]["0"]
    assert dropped == report.layers[0].inputs_unread >= 3
    assert small[0].layer.in_features == 12 - dropped == small[0].index.numel()
    torch.testing.assert_close(small(x), plain(x), rtol=1e-12, atol=1e-12)
    assert report.size["flops"]["after"] < 2 * (12 - dropped) * report.layers[0].width_after + 2 * 40 * 30
    assert "inputs of the model dropped" in str(report)
    for form in ("dense", "sparse"):
        path = nettrim.save(small, tmp_path / f"{form}.safetensors", report, format=form)
        loaded, _ = nettrim.load(path, mlp(sizes=(12, 40, 30, 4)))
        torch.testing.assert_close(loaded(x), small(x), rtol=0, atol=0)
    exported = torch.export.export(small, (x[:2],))
    torch.testing.assert_close(exported.module()(x[2:4]), small(x[2:4]))
    torch.testing.assert_close(torch.jit.script(small)(x), small(x))


def test_gather_inputs_only_with_neurons():
    with pytest.raises(ValueError, match="gather_inputs"):
        nettrim.trim(mlp(), inputs(50), gather_inputs=True, progress=False)


def test_a_first_conv_gathers_the_channels_it_reads(tmp_path):
    model, x = small_cnn(), images(64)
    x[:, 1] = 0.0  # input channel 1 carries nothing, so the trim reads it with zeros
    small, report = nettrim.trim(model, x, epsilon=0.2, structure="neurons", gather_inputs=True, progress=False)
    assert isinstance(small.conv1, neurons.GatheredInputs) and small.conv1.dim == 1
    assert small.conv1.index.tolist() == [0] and small.conv1.layer.in_channels == 1
    assert report.size["inputs_dropped"] == {"conv1": 1}
    plain, _ = nettrim.trim(model, x, epsilon=0.2, structure="neurons", progress=False)
    torch.testing.assert_close(small(x), plain(x), rtol=1e-12, atol=1e-12)
    loaded, _ = nettrim.load(nettrim.save(small, tmp_path / "small.safetensors", report), small_cnn())
    torch.testing.assert_close(loaded(x), small(x), rtol=0, atol=0)


def test_a_model_sparsity_of_a_neuron_trim_is_measured_once_the_neurons_are_removed():
    """The weights that read a removed neuron go with it though they were not zero: the search, its report and
    its rows count what the smaller model keeps, so it reaches the target instead of overshooting it."""
    model, x = mlp(sizes=(12, 32, 16, 4)), inputs(300)
    total = sum(module.weight.numel() for module in model if isinstance(module, nn.Linear))
    trimmed, report = nettrim.trim(model, x, model_sparsity=0.5, structure="neurons", progress=False)
    kept = sum(int((module.weight != 0).sum()) for module in trimmed.modules() if isinstance(module, nn.Linear))
    assert 0.5 <= 1 - kept / total <= 0.5 + 0.01
    assert report.nonzeros_after == kept and report.weights == total
    assert report.model_sparsity["reached"] == pytest.approx(1 - kept / total)
    assert sum(row.width_after for row in report.layers) < sum(row.width_before for row in report.layers)
