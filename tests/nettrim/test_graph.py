"""Reading ReLUs and BatchNorms from the fx graph, and folding BatchNorm."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nettrim
from nettrim.graph import fold_batchnorm, trace_layers
from networks import images, small_cnn


class Activations(nn.Module):
    """One linear layer per way of writing a ReLU, and some that are not (directly) followed by one."""

    def __init__(self):
        super().__init__()
        self.module_relu, self.inplace_module = nn.Linear(4, 4), nn.Linear(4, 4)
        self.functional, self.functional_inplace = nn.Linear(4, 4), nn.Linear(4, 4)
        self.torch_relu, self.torch_relu_, self.method, self.method_ = (nn.Linear(4, 4) for _ in range(4))
        self.sigmoid, self.two_users, self.pooled, self.last = (nn.Linear(4, 4) for _ in range(4))
        self.relu, self.relu_inplace = nn.ReLU(), nn.ReLU(inplace=True)

    def forward(self, x):
        x = self.relu(self.module_relu(x))
        x = self.relu_inplace(self.inplace_module(x))
        x = F.relu(self.functional(x))
        x = F.relu(self.functional_inplace(x), inplace=True)
        x = torch.relu(self.torch_relu(x))
        x = torch.relu_(self.torch_relu_(x))
        x = self.method(x).relu()
        x = self.method_(x).relu_()
        x = torch.sigmoid(self.sigmoid(x))
        y = self.two_users(x)
        x = F.relu(y) + y
        x = F.relu(F.max_pool1d(self.pooled(x)[:, None], 1)[:, 0])
        return self.last(x)


def test_relus_are_read_from_the_graph():
    model = Activations()
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    found = trace_layers(model, names)
    assert found.relu == {"module_relu", "inplace_module", "functional", "functional_inplace", "torch_relu",
                          "torch_relu_", "method", "method_"}
    assert found.batchnorm == {}


def test_batchnorm_followed_by_relu_is_found_and_paired():
    model = small_cnn()
    found = trace_layers(model, ["conv1", "conv2", "fc1", "fc2"])
    assert found.relu == {"conv1", "conv2", "fc1"}
    assert found.batchnorm == {"conv1": "bn1", "fc1": "bn2"}


def test_folding_batchnorm_keeps_the_outputs():
    model = small_cnn()
    x = images(16)
    expected = model(x)
    folded = copy.deepcopy(model)
    fold_batchnorm(folded, {"conv1": "bn1", "fc1": "bn2"})
    assert isinstance(folded.bn1, nn.Identity) and isinstance(folded.bn2, nn.Identity)
    assert folded.conv1.bias is not None  # conv1 had no bias: folding gives it one
    torch.testing.assert_close(folded(x), expected, rtol=1e-12, atol=1e-12)


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3)

    def forward(self, x):
        if x.sum() > 0:  # fx cannot trace control flow on values
            return self.fc(x)
        return x


def test_untraceable_model_says_how_to_name_relu_layers():
    with pytest.raises(ValueError, match="relu_layers"):
        trace_layers(DataDependent(), ["fc"])


class Shared(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3)

    def forward(self, x):
        return self.fc(F.relu(self.fc(x)))


def test_shared_layer_is_refused():
    with pytest.raises(ValueError, match="more than once"):
        trace_layers(Shared(), ["fc"])


class UntraceableShared(nn.Module):
    """fx cannot trace it (control flow on values), and `fc` is called twice, after `head` has run."""

    def __init__(self):
        super().__init__()
        self.head, self.fc = nn.Linear(3, 3), nn.Linear(3, 3)

    def forward(self, x):
        x = F.relu(self.fc(self.head(x)))
        if x.sum() > -1:
            x = self.fc(x)
        return x


@pytest.mark.parametrize("script", [False, True])
def test_a_layer_called_twice_is_refused_where_fx_cannot_trace(script):
    """Named through relu_layers= (no graph), a layer called a second time after every selected layer had its
    input was captured at its first call only, and its second call site missed the budget: it is refused by name,
    for TorchScript (dispatched products) too."""
    model = UntraceableShared().double()
    if script:
        model = torch.jit.script(model)
    x = torch.randn(40, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"\['fc'\] are called more than once"):
        nettrim.trim(model, x, relu_layers=["fc"], progress=False)
    trimmed, report = nettrim.trim(model, x, relu_layers=[], exclude=["fc"], progress=False)
    assert [row.name for row in report.layers] == ["head"]


def test_a_layer_inside_a_module_fx_does_not_trace_into_is_warned_about():
    """nn.TransformerEncoderLayer is a leaf for torch.fx: its linear1 feeds a ReLU the graph cannot show."""
    model = nn.Sequential(nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, activation="relu",
                                                     batch_first=True), nn.Linear(8, 3))
    with pytest.warns(UserWarning, match=r"\['0.linear1', '0.linear2'\] only inside modules .*relu_layers="):
        graph = trace_layers(model, ["0.linear1", "0.linear2", "1"])
    assert graph.relu == set()
