"""Small reference networks for MNIST (LeNet-300-100) with seeded, cached training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from .datasets import load_mnist

DEFAULT_CACHE = Path(__file__).resolve().parent.parent / ".cache"


def lenet_300_100() -> nn.Sequential:
    """784-300-100-10 with ReLU after the two hidden layers (LeCun et al. 1998)."""
    return nn.Sequential(nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 10))


def train(model: nn.Module, images: np.ndarray, labels: np.ndarray, *, epochs: int = 4, lr: float = 1e-3,
          batch_size: int = 128, seed: int = 0) -> nn.Module:
    """Adam on cross-entropy, seeded; the model is trained in place and returned in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x, y = torch.from_numpy(images), torch.from_numpy(labels)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(x), generator=generator).split(batch_size):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
    return model.eval()


@torch.no_grad()
def test_error(model: nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of misclassified images."""
    predictions = model(torch.from_numpy(images)).argmax(dim=1).numpy()
    return float(np.mean(predictions != labels))


def trained_lenet_300_100(*, epochs: int = 4, seed: int = 0, cache: Path | None = DEFAULT_CACHE) -> nn.Module:
    """LeNet-300-100 trained on the bundled MNIST training set, cached as a state dict after the first call."""
    model = lenet_300_100()
    path = None if cache is None else Path(cache) / f"lenet_300_100_e{epochs}_s{seed}.pt"
    if path is not None and path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    torch.manual_seed(seed)
    model = lenet_300_100()
    images, labels = load_mnist("train")
    train(model, images, labels, epochs=epochs, seed=seed)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
    return model
