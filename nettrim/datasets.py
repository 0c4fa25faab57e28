"""The MNIST data bundled under data/mnist (original idx gz files; nothing is downloaded)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

BUNDLED_MNIST = Path(__file__).resolve().parent.parent / "data" / "mnist"
_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
          "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


def read_idx(path: Path) -> np.ndarray:
    """Decode one idx file (gzip): magic 2051 images (n, rows, cols) or 2049 labels (n,), uint8."""
    with gzip.open(path, "rb") as stream:
        data = stream.read()
    magic = int.from_bytes(data[:4], "big")
    if magic == 2051:
        count, rows, cols = (int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(3))
        return np.frombuffer(data, dtype=np.uint8, offset=16).reshape(count, rows, cols)
    if magic == 2049:
        count = int.from_bytes(data[4:8], "big")
        return np.frombuffer(data, dtype=np.uint8, offset=8)[:count]
    raise ValueError(f"{path}: not an idx image or label file (magic {magic})")


def load_mnist(split: str = "train", root: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images as float32 (n, 784) in [0, 1] and labels as int64 (n,), from the bundled idx files."""
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    folder = Path(root) if root is not None else BUNDLED_MNIST
    images_file, labels_file = (folder / name for name in _FILES[split])
    if not images_file.exists():
        raise FileNotFoundError(f"{images_file} is missing (MNIST is bundled under data/mnist in the repository)")
    images = read_idx(images_file).reshape(-1, 28 * 28).astype(np.float32) / 255.0
    return images, read_idx(labels_file).astype(np.int64)


#: Per-channel mean and std of the CIFAR-10 models' input normalization (on pixels in [0, 1]).
CIFAR_MEAN, CIFAR_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def load_cifar10(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Images as normalized float32 (n, 3, 32, 32) and labels as int64 (n,), from an .npz archive holding uint8
    `images` (n, 32, 32, 3) and `labels` (the form of the shared CIFAR-10 part; nothing is downloaded)."""
    with np.load(path) as archive:
        images, labels = archive["images"], archive["labels"]
    pixels = images.astype(np.float32).transpose(0, 3, 1, 2) / 255.0
    mean, std = (np.asarray(v, dtype=np.float32)[None, :, None, None] for v in (CIFAR_MEAN, CIFAR_STD))
    return np.ascontiguousarray((pixels - mean) / std), labels.astype(np.int64)
