"""How model_sparsity is shared among layers: the OBS saliencies and the global threshold (nettrim/allocation.py)."""

import numpy as np
import pytest
import torch

from nettrim import allocation
from nettrim.layers import select_layers


def test_a_weights_saliency_is_the_error_its_removal_costs_after_refitting_the_others(monkeypatch):
    """w_im^2 / [H^-1]_ii is exactly the rise of ||w_m^T X - y_m||^2 when w_im is removed and the neuron's other
    weights are fitted again by least squares (no ridge), over the layer's response energy."""
    monkeypatch.setattr(allocation, "RIDGE", 0.0)
    torch.manual_seed(0)
    layer = select_layers(torch.nn.Sequential(torch.nn.Linear(6, 3, bias=False)).double())[0]
    rng = np.random.default_rng(0)
    X, W = rng.standard_normal((6, 50)), layer.weight_matrix()
    scores = allocation.saliencies(layer, W, X)
    energy = np.linalg.norm(W.T @ X) ** 2
    for i, m in [(0, 0), (3, 1), (5, 2)]:
        others = np.delete(np.arange(6), i)
        refit = np.linalg.lstsq(X[others].T, X.T @ W[:, m], rcond=None)[0]
        rise = np.linalg.norm(refit @ X[others] - W[:, m] @ X) ** 2
        assert scores[i, m] == pytest.approx(rise / energy, rel=1e-9)


def test_the_shares_reach_the_target_and_go_where_removals_cost_least():
    """Layer b's weights are 80% tiny (1e-6 of the rest), layer a's all of one scale: b gives its tiny weights
    first, and the shares add up to the target, none above MAX_SHARE."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(20, 20, bias=False), torch.nn.Linear(20, 20, bias=False)).double()
    a, b = select_layers(model)
    rng = np.random.default_rng(1)
    tiny = rng.random((20, 20)) < 0.8
    weights = {"0": rng.standard_normal((20, 20)), "1": np.where(tiny, 1e-6, 1.0) * rng.standard_normal((20, 20))}
    inputs = {name: rng.standard_normal((20, 400)) for name in weights}
    low = allocation.allocate([a, b], weights, inputs, tiny.sum() / 800)
    assert low.shares == {"0": 0.0, "1": tiny.mean()}
    assert low.budgets["0"] == 0.0 and 0 < low.budgets["1"] < 0.01  # the tiny weights' error is tiny
    high = allocation.allocate([a, b], weights, inputs, 0.7)
    assert high.shares["0"] < high.shares["1"] <= allocation.MAX_SHARE
    assert (high.shares["0"] + high.shares["1"]) / 2 == pytest.approx(0.7, abs=1 / 800)
