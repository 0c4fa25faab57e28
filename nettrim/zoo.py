"""Reference networks with seeded, cached training: LeNet-300-100 and LeNet-5 on the bundled MNIST, and a
CIFAR-style residual network with BatchNorm for 28 x 28 images (trained on Fashion-MNIST by the architecture
benchmark, from a folder of the same idx files)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .datasets import load_mnist

DEFAULT_CACHE = Path(__file__).resolve().parent.parent / ".cache"


def lenet_300_100() -> nn.Sequential:
    """784-300-100-10 with ReLU after the two hidden layers (LeCun et al. 1998); input (n, 784)."""
    return nn.Sequential(nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 10))


def lenet5() -> nn.Sequential:
    """The Caffe LeNet-5 (20-50-800-500): conv 5x5 x20, max-pool, conv 5x5 x50, max-pool, 800-500 with ReLU,
    500-10. The convs have no ReLU (their output goes to pooling). Input (n, 1, 28, 28)."""
    return nn.Sequential(nn.Conv2d(1, 20, 5), nn.MaxPool2d(2), nn.Conv2d(20, 50, 5), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(800, 500), nn.ReLU(), nn.Linear(500, 10))


class BasicBlock(nn.Module):
    """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)), 3 x 3 convs; the shortcut is a 1 x 1 conv with
    BatchNorm where the block changes the width or the resolution (He et al. 2016, option B), else x."""

    def __init__(self, inputs: int, outputs: int, stride: int):
        super().__init__()
        self._convolutions(inputs, outputs, stride)
        self.shortcut = nn.Sequential()
        if stride != 1 or inputs != outputs:
            self.shortcut = nn.Sequential(nn.Conv2d(inputs, outputs, 1, stride, bias=False), nn.BatchNorm2d(outputs))

    def _convolutions(self, inputs: int, outputs: int, stride: int) -> None:
        """conv1 (stride `stride`), bn1, conv2, bn2: the block's two 3 x 3 convolutions and their BatchNorms."""
        self.conv1 = nn.Conv2d(inputs, outputs, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(outputs)
        self.conv2 = nn.Conv2d(outputs, outputs, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(outputs)

    def forward(self, x):
        return F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))) + self.shortcut(x))


def resnet(blocks: int = 1, widths=(16, 32, 64), classes: int = 10) -> nn.Sequential:
    """The CIFAR ResNet-(6 blocks + 2) for one-channel 28 x 28 images: a 3 x 3 stem, three stages of `blocks`
    basic blocks of the given widths (the second and third halve the resolution), global average pooling and a
    linear classifier. blocks=1 is ResNet-8, 3 is ResNet-20."""
    layers = [nn.Conv2d(1, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU()]
    inputs = widths[0]
    for stage, width in enumerate(widths):
        for block in range(blocks):
            layers.append(BasicBlock(inputs, width, 2 if stage > 0 and block == 0 else 1))
            inputs = width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(inputs, classes))


ARCHITECTURES = {"lenet_300_100": (lenet_300_100, (784,)), "lenet5": (lenet5, (1, 28, 28)),
                 "resnet8": (resnet, (1, 28, 28))}


def mnist_inputs(name: str, split: str, root: Path | None = None) -> tuple[torch.Tensor, np.ndarray]:
    """The MNIST split (bundled, or the idx files in `root`, e.g. Fashion-MNIST's) shaped for architecture
    `name`, and its labels."""
    images, labels = load_mnist(split, root)
    return torch.from_numpy(images).reshape(-1, *ARCHITECTURES[name][1]), labels


def train(model: nn.Module, images: torch.Tensor, labels: np.ndarray, *, epochs: int = 4, lr: float = 1e-3,
          batch_size: int = 128, seed: int = 0, schedule: str = "cosine") -> nn.Module:
    """Adam on cross-entropy, seeded, with a cosine learning-rate decay (schedule="cosine") or a constant rate
    ("constant"); trained in place, returned in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    targets = torch.from_numpy(labels)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * -(-len(images) // batch_size)
    decay = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(steps, 1)) if schedule == "cosine"
             else torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0))
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(images), generator=generator).split(batch_size):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(images[batch]), targets[batch]).backward()
            optimizer.step()
            decay.step()
    return model.eval()


@torch.no_grad()
def test_error(model: nn.Module, images, labels: np.ndarray, batch_size: int = 2000) -> float:
    """Fraction of misclassified images."""
    images = torch.as_tensor(images)
    predictions = torch.cat([model(batch).argmax(dim=1) for batch in images.split(batch_size)]).numpy()
    return float(np.mean(predictions != labels))


def trained(name: str, *, epochs: int, lr: float = 1e-3, seed: int = 0, schedule: str = "cosine",
            cache: Path | None = DEFAULT_CACHE, root: Path | None = None) -> nn.Module:
    """Architecture `name` trained on the bundled MNIST training set (or the idx files in `root`, named in the
    cache file by the folder's name), cached as a state dict after the first call."""
    build = ARCHITECTURES[name][0]
    data = "" if root is None else f"_{Path(root).name}"
    path = None if cache is None else Path(cache) / f"{name}{data}_e{epochs}_lr{lr:g}_s{seed}_{schedule}.pt"
    torch.manual_seed(seed)
    model = build()
    if path is not None and path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    images, labels = mnist_inputs(name, "train", root)
    train(model, images, labels, epochs=epochs, lr=lr, seed=seed, schedule=schedule)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
    return model


def trained_lenet_300_100(*, epochs: int = 10, seed: int = 0, schedule: str = "cosine",
                          cache: Path | None = DEFAULT_CACHE) -> nn.Module:
    """LeNet-300-100 trained with Adam (lr 1e-3): 1.86% test error after 10 epochs with the cosine decay."""
    return trained("lenet_300_100", epochs=epochs, seed=seed, schedule=schedule, cache=cache)


class ZeroPadShortcut(nn.Module):
    """He et al. 2016's option-A shortcut: the input subsampled by `stride` in space and zero-padded to
    `outputs` channels (half the new channels before the old ones, half after); no weights."""

    def __init__(self, inputs: int, outputs: int, stride: int):
        super().__init__()
        added = outputs - inputs
        self.stride, self.before, self.after = stride, added // 2, added - added // 2

    def forward(self, x):
        return F.pad(x[:, :, ::self.stride, ::self.stride], (0, 0, 0, 0, self.before, self.after))


class CifarBlock(BasicBlock):
    """BasicBlock with the option-A shortcut (ZeroPadShortcut) instead of a 1 x 1 conv."""

    def __init__(self, inputs: int, outputs: int, stride: int):
        nn.Module.__init__(self)
        self._convolutions(inputs, outputs, stride)
        self.shortcut = ZeroPadShortcut(inputs, outputs, stride) if stride != 1 or inputs != outputs else nn.Identity()


class CifarResNet(nn.Module):
    """The CIFAR-10 ResNet-(6n + 2) of He et al. 2016, section 4.2, with option-A shortcuts: a 3 x 3 conv to 16
    channels, three stages of n blocks (16, 32, 64 channels; the second and third start with stride 2), global
    average pooling and a linear classifier. Module names match the published CIFAR ResNet checkpoints
    (conv1, bn1, layer1.0.conv1, ..., linear). Input (n, 3, 32, 32), normalized per channel."""

    def __init__(self, blocks: int = 3, classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        inputs = 16
        for stage, width in enumerate((16, 32, 64), start=1):
            stride = 1 if stage == 1 else 2
            blocks_of_stage = [CifarBlock(inputs if b == 0 else width, width, stride if b == 0 else 1)
                               for b in range(blocks)]
            setattr(self, f"layer{stage}", nn.Sequential(*blocks_of_stage))
            inputs = width
        self.linear = nn.Linear(64, classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def cifar_resnet20(weights: str | Path | None = None) -> CifarResNet:
    """ResNet-20 for CIFAR-10 in eval mode; `weights`: a checkpoint of the published form (a dict with a
    "state_dict" whose keys may carry DataParallel's "module." prefix), loaded exactly (strict)."""
    model = CifarResNet(blocks=3)
    if weights is not None:
        saved = torch.load(weights, map_location="cpu", weights_only=True)
        state = saved.get("state_dict", saved) if isinstance(saved, dict) else saved
        model.load_state_dict({key.removeprefix("module."): value for key, value in state.items()})
    return model.eval()
