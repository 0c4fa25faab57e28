"""The array module behind the ADMM: NumPy on the CPU, CuPy on an NVIDIA GPU (same code, swapped module)."""

from __future__ import annotations

import numpy as np


def array_module(device: str):
    """NumPy for device="cpu", CuPy for device="cuda" (or "cuda:K")."""
    if device == "cpu":
        return np
    if isinstance(device, str) and device.split(":")[0] in ("cuda", "gpu"):
        try:
            import cupy
        except ImportError as error:
            raise ImportError("device='cuda' needs CuPy: pip install 'nettrim[gpu]' (and an NVIDIA GPU)") from error
        if ":" in device:
            cupy.cuda.Device(int(device.split(":")[1])).use()
        return cupy
    raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")


def to_host(array) -> np.ndarray:
    return array.get() if hasattr(array, "get") else np.asarray(array)
