"""refit=True (nettrim/refit.py): least squares on each neuron's support against numpy's lstsq, and whole trims in
which the zeros stay, no neuron's output error grows, and the smaller model keeps the widths of the trim."""

import numpy as np
import pytest
import torch
from torch import nn

import nettrim
from nettrim.refit import least_squares_on_supports
from networks import inputs, mlp


def test_least_squares_on_supports_is_the_least_squares_solution_of_each_support():
    rng = np.random.default_rng(0)
    X, Z = rng.standard_normal((9, 200)), rng.standard_normal((6, 200))
    supports = rng.random((9, 6)) < 0.5
    supports[:, 1] = supports[:, 0]  # two neurons sharing one support
    supports[:, 2] = False           # and one with none
    U = least_squares_on_supports(X, Z, supports)
    assert not U[~supports].any()
    for m in range(6):
        rows = np.flatnonzero(supports[:, m])
        expected = np.linalg.lstsq(X[rows].T, Z[m], rcond=None)[0] if rows.size else np.zeros(0)
        np.testing.assert_allclose(U[rows, m], expected, rtol=1e-6, atol=1e-9)


def test_least_squares_over_each_neurons_samples():
    rng = np.random.default_rng(3)
    X, Z = rng.standard_normal((7, 120)), rng.standard_normal((4, 120))
    supports, samples = rng.random((7, 4)) < 0.7, rng.random((4, 120)) < 0.5
    U = least_squares_on_supports(X, Z, supports, samples)
    for m in range(4):
        rows = np.flatnonzero(supports[:, m])
        expected = np.linalg.lstsq(X[np.ix_(rows, samples[m])].T, Z[m, samples[m]], rcond=None)[0]
        np.testing.assert_allclose(U[rows, m], expected, rtol=1e-6, atol=1e-9)
    assert not U[~supports].any()


def test_an_input_that_never_varies_leaves_the_fit_solvable():
    X = np.vstack([np.random.default_rng(1).standard_normal((3, 50)), np.zeros((1, 50)), np.ones((1, 50))])
    Z = np.random.default_rng(2).standard_normal((2, 50))
    U = least_squares_on_supports(X, Z, np.ones((5, 2), dtype=bool))
    assert np.all(np.isfinite(U)) and not U[3].any()
    np.testing.assert_allclose(U[[0, 1, 2, 4]], np.linalg.lstsq(X[[0, 1, 2, 4]].T, Z.T, rcond=None)[0], atol=1e-8)


def _output_error(model, reference, x):
    with torch.no_grad():
        return float(torch.linalg.norm(model(x) - reference(x)))


@pytest.mark.parametrize("structure", ["weights", "neurons"])
def test_a_refit_keeps_the_zeros_and_lowers_the_output_error(structure):
    model, x = mlp(sizes=(12, 40, 30, 4)), inputs(400)
    plain, plain_report = nettrim.trim(model, x, epsilon=0.3, structure=structure, progress=False)
    fitted, report = nettrim.trim(model, x, epsilon=0.3, structure=structure, refit=True, progress=False)
    for a, b in zip(plain.parameters(), fitted.parameters(), strict=True):
        assert torch.equal(a == 0, b == 0)  # the zeros stay, and the nonzeros
    assert [row.nonzeros_after for row in report.layers] == [row.nonzeros_after for row in plain_report.layers]
    for row in report.layers:
        before, after = row.refit_error
        assert 0 <= after <= before
    assert report.layers[-1].refit_error[1] < report.layers[-1].refit_error[0]
    assert _output_error(fitted, model, x) < _output_error(plain, model, x)
    assert "refit, output error / ||Y|| on the calibration data: 0 " in str(report)
    assert nettrim.Report.from_dict(report.to_dict()).layers[0].refit_error == report.layers[0].refit_error


def test_a_grouped_convolution_is_refitted_group_by_group():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1, groups=2), nn.ReLU(), nn.Flatten(),
                          nn.Linear(8 * 6 * 6, 5)).double().eval()
    x = torch.randn(60, 4, 6, 6, dtype=torch.float64)
    plain, _ = nettrim.trim(model, x, epsilon=0.3, progress=False)
    fitted, report = nettrim.trim(model, x, epsilon=0.3, refit=True, progress=False)
    assert torch.equal(fitted[0].weight == 0, plain[0].weight == 0)
    assert report.layers[0].refit_error[1] <= report.layers[0].refit_error[0]
    assert _output_error(fitted, model, x) < _output_error(plain, model, x)


def test_a_bad_refit_is_refused_by_name():
    model = mlp()
    before = [parameter.clone() for parameter in model.parameters()]
    with pytest.raises(ValueError, match="refit"):
        nettrim.trim(model, inputs(50), refit="yes", progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
