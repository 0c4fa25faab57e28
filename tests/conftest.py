"""Skip tests marked `gpu` unless an NVIDIA GPU is present (NETTRIM_REQUIRE_GPU=1 makes it an error); the CPU
stand-ins for a GPU (strict_device, device). The tests are grouped as the code is (solvers/, nettrim/,
end_to_end/); the problem and network builders they share (instances.py, networks.py, torchvision_models.py) and
their saved programs (data/) are here."""

import os
import sys
from pathlib import Path

import pytest

sys.path.append(str(Path(__file__).parent))  # the shared builders, after the packages of the same names


def _cuda_available() -> bool:
    """A CUDA device reachable through CuPy or torch (device="cuda" uses either)."""
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() > 0:
            return True
    except Exception:  # no CuPy, no driver, no device: all mean "no GPU through CuPy"
        pass
    import torch

    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items or _cuda_available():
        return
    if os.environ.get("NETTRIM_REQUIRE_GPU") == "1":
        raise pytest.UsageError("NETTRIM_REQUIRE_GPU=1 but CuPy or a CUDA device is not available")
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU (through CuPy or torch)")
    for item in gpu_items:
        item.add_marker(skip)


@pytest.fixture
def strict_device(monkeypatch):
    """array_api_strict's non-default device "device1", the CPU stand-in for a GPU: its arrays refuse conversion
    to NumPy and mixing with host arrays, as CuPy's do, and here also implicit conversion to Python numbers
    (bool(), float(), int(), which CuPy performs by synchronizing): every device-to-host transfer the solver
    makes must be one of its explicit, counted ones (solvers.arrays.Backend.to_host)."""
    import array_api_strict
    from array_api_strict._array_object import Array

    device = array_api_strict.Device("device1")

    def refusing(name):
        original = getattr(Array, name)

        def refuse(self, *args):
            if self.device == device:
                raise RuntimeError(f"implicit device-to-host conversion ({name}) of an array on {device}")
            return original(self, *args)

        return refuse

    for name in ("__bool__", "__float__", "__int__", "__index__", "__complex__"):
        monkeypatch.setattr(Array, name, refusing(name))
    return device


@pytest.fixture(params=["strict", "torch"])
def device(request):
    """Each device the CPU can stand in for a GPU with: array_api_strict's "device1" (strict_device) and torch
    tensors on the CPU."""
    if request.param == "torch":
        import torch

        return torch.device("cpu")
    return request.getfixturevalue("strict_device")
