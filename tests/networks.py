"""Small seeded torch models and calibration data for the whole-model tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def mlp(seed: int = 0, sizes=(12, 16, 10, 4), dtype=torch.float64, zeros: float = 0.0) -> nn.Sequential:
    """Linear-ReLU-...-Linear, seeded; `zeros` is the fraction of each weight matrix set to zero (a network
    with a sparse structure for Net-Trim to find)."""
    torch.manual_seed(seed)
    layers = []
    for index, (inputs, outputs) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(inputs, outputs))
        if index < len(sizes) - 2:
            layers.append(nn.ReLU())
    with torch.no_grad():
        for layer in layers:
            if isinstance(layer, nn.Linear):
                layer.weight.mul_(torch.rand(layer.weight.shape) >= zeros)
    return nn.Sequential(*layers).to(dtype).eval()


def inputs(samples: int, features: int = 12, seed: int = 1, dtype=torch.float64) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(samples, features, generator=generator, dtype=dtype)


class SmallCNN(nn.Module):
    """conv-BN-relu, conv(stride 2, padding 'same'-like)-relu, flatten, linear-BN-relu, linear (functional relus)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 6, 3, stride=2, padding=1, dilation=1)
        self.fc1 = nn.Linear(6 * 4 * 4, 12)
        self.bn2 = nn.BatchNorm1d(12)
        self.fc2 = nn.Linear(12, 3)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        x = self.bn2(self.fc1(x.flatten(1))).relu()
        return self.fc2(x)


def small_cnn(seed: int = 0, dtype=torch.float64) -> SmallCNN:
    """SmallCNN with random (not identity) BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    model = SmallCNN().to(dtype)
    with torch.no_grad():
        for bn in (model.bn1, model.bn2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
    return model.eval()


def images(samples: int, seed: int = 1, dtype=torch.float64) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(samples, 2, 8, 8, generator=generator, dtype=dtype)
