"""Skip tests marked `gpu` unless CuPy and an NVIDIA GPU are present (NETTRIM_REQUIRE_GPU=1 makes it an error)."""

import os

import pytest


def _cuda_available() -> bool:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no CuPy, no driver, no device: all mean "no GPU here"
        return False


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items or _cuda_available():
        return
    if os.environ.get("NETTRIM_REQUIRE_GPU") == "1":
        raise pytest.UsageError("NETTRIM_REQUIRE_GPU=1 but CuPy or a CUDA device is not available")
    skip = pytest.mark.skip(reason="needs CuPy and an NVIDIA GPU")
    for item in gpu_items:
        item.add_marker(skip)
