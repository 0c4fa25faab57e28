"""Grouped and depthwise convolutions (Conv2d and Conv1d): one program per group, against the CVXPY oracle."""

import numpy as np
import pytest
import torch
from torch import nn

import nettrim
import solvers
from nettrim.layers import Layer, select_layers
from nettrim.programs import SMALL_PROGRAM_FEATURES
from nettrim.signals import capture
from solvers.grouped import GroupedProblem

FIT_RTOL = 1e-3  # the solver's promise: fit <= eps (1 + 1e-3)
# With the layer budget the first conv (not grouped) needs about 10,000 iterations at this tolerance: 9,470 to
# 10,440 when X changes by 1e-15 of itself, so the default max_iter (10,000) would decide the test by rounding.
TIGHT = {"dtype": "float64", "rel_tol": 1e-6, "max_iter": 30_000}


def grouped_cnn(seed: int = 0) -> nn.Sequential:
    """A conv, a depthwise conv (groups of N = 10: interior point), a grouped conv (N = 36: ADMM, 4 output
    channels per group) and a classifier."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(2, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, groups=2, bias=False), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * 4 * 4, 3)).double().eval()


def images(samples: int = 24) -> torch.Tensor:
    return torch.randn(samples, 2, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


@pytest.mark.parametrize(("conv", "shape"), [
    (nn.Conv2d(6, 4, 3, groups=2, padding=1), (2, 6, 7, 8)),
    (nn.Conv2d(4, 8, (3, 2), groups=4, stride=2, dilation=(1, 2), bias=False), (2, 4, 9, 9)),
    (nn.Conv2d(3, 3, 3, groups=3, padding=1, padding_mode="reflect"), (2, 3, 6, 6)),
    (nn.Conv1d(3, 5, 4), (2, 3, 11)),
    (nn.Conv1d(4, 4, 3, groups=4, padding="same", dilation=2, padding_mode="circular"), (2, 4, 10)),
    (nn.Conv1d(6, 3, 2, groups=3, stride=3, padding=1, padding_mode="replicate"), (3, 6, 12)),
    (nn.Conv1d(2, 2, 3, groups=2), (2, 7)),  # one unbatched input
])
def test_the_groups_responses_equal_the_conv_forward(conv, shape):
    torch.manual_seed(0)
    conv = conv.double()
    x = torch.randn(*shape, dtype=torch.float64)
    layer = Layer("conv", conv)
    X = layer.features(x).numpy().T
    if layer.has_bias:
        X = np.vstack([X, np.ones((1, X.shape[1]))])
    expected = conv(x).detach()
    expected = expected[None] if len(shape) == 2 else expected
    rows = expected.movedim(1, -1).reshape(-1, conv.out_channels).numpy().T  # (M, samples)
    np.testing.assert_allclose(layer.response(layer.weight_matrix(), X), rows, rtol=1e-12, atol=1e-12)
    assert len(layer.group_inputs(X)) == conv.groups and layer.weight_matrix().shape[1] == conv.out_channels


def _group_programs(model, x, budget="neuron", g=0.1):
    """Every grouped layer's GroupedProblem on the original signals (parallel mode's programs)."""
    layers = select_layers(model)
    signals = capture(model, [x], layers, {layer.name: i for i, layer in enumerate(layers)}, None, 0)
    programs = {}
    for layer in layers:
        if layer.groups > 1:
            W = layer.weight_matrix()
            Y = np.maximum(layer.response(W, signals[layer.name]), 0.0)
            programs[layer.name] = nettrim.programs.layer_problem(layer, signals[layer.name], Y, W, "relu", budget,
                                                                  g, None)
    return programs


@pytest.mark.parametrize("budget", ["neuron", "layer"])
def test_each_group_is_trimmed_to_the_oracles_optimum(budget):
    model, x = grouped_cnn(), images()
    trimmed, report = nettrim.trim(model, x, epsilon=0.1, mode="parallel", budget=budget, progress=False,
                                   solver_options=TIGHT)
    programs = _group_programs(model, x, budget)
    assert set(programs) == {"2", "4"}
    for name, program in programs.items():
        assert isinstance(program, GroupedProblem) and program.groups == (8 if name == "2" else 2)
        U = Layer(name, trimmed.get_submodule(name)).weight_matrix()
        assert program.columns_within_budget(U, FIT_RTOL).all()
        oracles = [solvers.solve(part, backend="cvxpy") for part in program.parts]
        assert all(oracle.status == "optimal" for oracle in oracles)
        optimum, l1 = sum(oracle.objective for oracle in oracles), np.abs(U).sum()
        row = report.layer(name)
        assert row.groups == program.groups and row.status == "optimal" and row.fit_ratio <= 1 + FIT_RTOL
        assert l1 == pytest.approx(optimum, rel=5e-3)
        if program.shape[0] > SMALL_PROGRAM_FEATURES:  # the ADMM's: the groups' bounds are certificates
            assert (1 - row.certified_gap) * l1 <= optimum * (1 + 1e-6)
        else:  # interior point
            assert row.certified_gap is None and "CLARABEL" in row.message
        assert row.eps == pytest.approx(0.1 * np.linalg.norm(program.Y))  # the groups' budgets add up


def test_cascade_keeps_every_budget_and_bounds_the_output():
    model, x = grouped_cnn(), images()
    trimmed, report = nettrim.trim(model, x, epsilon=0.05, progress=False, solver_options=TIGHT)
    assert [row.groups for row in report.layers] == [1, 8, 2, 1]
    assert all(row.status == "optimal" and row.fit_ratio <= 1 + FIT_RTOL for row in report.layers)
    assert "conv2d g=8" in report.table() and nettrim.Report.from_dict(report.to_dict()).layers[1].groups == 8
    with torch.no_grad():
        change = float(torch.linalg.norm(trimmed(x) - model(x)) / torch.linalg.norm(model(x)))
    assert change < 0.2 and report.kept < 1


def test_a_conv1d_model_with_batchnorm_is_trimmed():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(3, 8, 5, padding="same"), nn.BatchNorm1d(8), nn.ReLU(),
                          nn.Conv1d(8, 8, 3, groups=4, padding=1, padding_mode="circular"), nn.ReLU(),
                          nn.Flatten(), nn.Linear(8 * 16, 2)).double().eval()
    model[1].running_mean.uniform_(-0.5, 0.5)
    x = torch.randn(40, 3, 16, dtype=torch.float64)
    trimmed, report = nettrim.trim(model, x, epsilon=0.05, progress=False)
    assert report.folded_batchnorm == {"0": "1"} and [row.kind for row in report.layers] == ["conv1d", "conv1d",
                                                                                             "linear"]
    assert report.layers[0].activation == "relu" and report.layers[1].groups == 4
    assert all(row.fit_ratio <= 1 + FIT_RTOL for row in report.layers) and report.kept < 1


def test_grouped_problem_measures_are_the_groups_side_by_side():
    rng = np.random.default_rng(0)
    parts = []
    for _ in range(3):
        X, W = rng.standard_normal((4, 30)), rng.standard_normal((4, 2))
        Y = np.maximum(W.T @ X, 0)
        parts.append(solvers.LayerProblem(X, Y, solvers.relative_budget(Y, 0.1, per_neuron=True),
                                          original_weights=W))
    grouped = GroupedProblem(parts)
    U = rng.standard_normal((4, 6))
    measures = grouped.evaluate(U)
    assert grouped.shape == (4, 30, 6) and grouped.columns[1] == slice(2, 4)
    assert measures["objective"] == pytest.approx(np.abs(U).sum())
    np.testing.assert_allclose(measures["fit"][2:4], parts[1].evaluate(U[:, 2:4])["fit"])
    np.testing.assert_array_equal(grouped.columns_within_budget(grouped.original_weights), np.ones(6, dtype=bool))
    with pytest.raises(ValueError, match="parts: group 1 is"):
        GroupedProblem([parts[0], solvers.LayerProblem(np.ones((3, 30)), np.ones((1, 30)), 0.1)])


def test_grouped_layers_are_trimmed_on_the_gpus_stand_in(strict_device):
    """The ADMM groups run on array_api_strict's "device1" (no implicit host transfer), the small groups by
    interior point on the CPU: the same budgets kept as on NumPy."""
    model, x = grouped_cnn(), images()
    _, report = nettrim.trim(model, x, epsilon=0.05, device=strict_device, progress=False)
    _, on_numpy = nettrim.trim(model, x, epsilon=0.05, progress=False)
    assert [row.groups for row in report.layers] == [1, 8, 2, 1]
    assert all(row.status == "optimal" and row.fit_ratio <= 1 + FIT_RTOL for row in report.layers)
    assert report.kept == pytest.approx(on_numpy.kept, abs=0.02)
