"""The model a benchmark measures: the zoo's cached model, or in --quick mode one trained briefly on the first
training images."""

from __future__ import annotations

from pathlib import Path

import torch

from nettrim.zoo import ARCHITECTURES, mnist_inputs, train, trained


def benchmark_model(name: str, sizes: dict, root: Path | None = None) -> torch.nn.Module:
    """`name` trained sizes["epochs"] epochs at sizes.get("lr", 1e-3) on the idx files in `root` (default: the
    bundled MNIST): on all training images, cached, or, when sizes has "training_images", on that many, uncached."""
    lr = sizes.get("lr", 1e-3)
    if "training_images" not in sizes:
        return trained(name, epochs=sizes["epochs"], lr=lr, root=root)
    images, labels = mnist_inputs(name, "train", root)
    torch.manual_seed(0)
    count = sizes["training_images"]
    return train(ARCHITECTURES[name][0](), images[:count], labels[:count], epochs=sizes["epochs"], lr=lr)
