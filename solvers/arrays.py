"""Where the ADMM's arrays live, and the only place where they cross between host and device.

The solver is written once against the Python array API standard (through array-api-compat), so the same code
runs on NumPy (the CPU), CuPy or torch (an NVIDIA GPU, or torch's CPU tensors) and array_api_strict (the CPU
stand-in for a GPU that CI uses: its arrays on a non-default device refuse implicit conversion to NumPy and
mixing with host arrays, as CuPy's do). A `Backend` holds the namespace and the device; every host-to-device
copy goes through `Backend.asarray` and every device-to-host one through `Backend.to_host` / `Backend.scalars`,
which count the latter (`device_to_host_transfers`): on a GPU each is a synchronization.
"""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass

import array_api_compat
import numpy as np

_counter = threading.local()


def device_to_host_transfers() -> int:
    """How many device-to-host transfers this thread's solves have made so far (a diagnostic for tests)."""
    return getattr(_counter, "count", 0)


def _count_transfer() -> None:
    _counter.count = device_to_host_transfers() + 1


def available_host_memory() -> int | None:
    """Bytes of host memory available to a new allocation without swapping: Linux's MemAvailable (free memory
    plus the page cache it can drop), else the free pages POSIX reports, else None."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


@dataclass(frozen=True)
class Backend:
    """An array namespace `xp` (array-API compatible) and the device its arrays are made on."""

    xp: object
    device: object
    name: str  # "numpy", "cupy", "torch" or "array_api_strict"

    @property
    def on_host(self) -> bool:
        """Is the device the host's memory (NumPy)? Then host arrays are used as they are."""
        return self.name == "numpy"

    @property
    def on_cuda(self) -> bool:
        """Is the device an NVIDIA GPU (CuPy, or torch on CUDA)?"""
        return self.name == "cupy" or (self.name == "torch" and self.device.type == "cuda")

    def dtype(self, name) -> object:
        """The namespace's float32 or float64 (`name` a NumPy dtype or its name)."""
        return getattr(self.xp, np.dtype(name).name)

    def asarray(self, host, dtype=None):
        """A copy of the host array (or Python scalar) on the device, in `dtype` if given (a NumPy dtype or its
        name, or one of the namespace's dtypes)."""
        host = np.asarray(host)
        if isinstance(dtype, str | np.dtype | type):
            host, dtype = host.astype(np.dtype(dtype), copy=False), None
        if self.name == "torch":
            import torch

            array = torch.from_numpy(np.ascontiguousarray(host)).to(self.device)
        else:
            array = self.xp.asarray(np.ascontiguousarray(host), device=self.device)
        return array if dtype is None else self.xp.astype(array, dtype)

    def might_be_true(self, mask) -> bool:
        """bool(any(mask)) on the host; True on a device, where asking would synchronize: the caller then does
        its work masked, which costs less than the wait."""
        return bool(self.xp.any(mask)) if self.on_host else True

    def to_host(self, array) -> np.ndarray:
        """The device array as a NumPy array: one counted device-to-host transfer."""
        _count_transfer()
        if self.name == "numpy":
            return np.asarray(array)
        if self.name == "cupy":
            return array.get()
        if self.name == "torch":
            return array.detach().cpu().numpy()
        return np.asarray(self.xp.asarray(array, device=self.xp.Device("CPU_DEVICE")))

    def scalars(self, *values) -> list[float]:
        """Device scalars (0-d arrays) as Python floats, in one transfer."""
        xp = self.xp
        stacked = xp.stack([xp.astype(xp.reshape(value, (1,)), xp.float64) for value in values])
        return [float(value) for value in self.to_host(stacked).ravel()]

    def free_memory(self) -> int | None:
        """Bytes free on the device: on CUDA the free device memory, on the host the memory the operating
        system reports as available (None where it reports nothing)."""
        if self.name == "cupy":
            return int(self.xp.cuda.Device().mem_info[0] + self.xp.get_default_memory_pool().free_bytes())
        if self.on_cuda:
            import torch

            return int(torch.cuda.mem_get_info(self.device)[0])
        return available_host_memory()

    @contextlib.contextmanager
    def tensor_float32(self, dtype, enabled: bool):
        """Float32 matrix products on TF32 tensor cores while the block runs (CuPy or torch on CUDA); yields
        whether they are."""
        if not enabled:
            yield False
            return
        if not self.on_cuda or np.dtype(dtype) != np.float32:
            raise ValueError("tf32=True needs device='cuda' (or another CUDA device) and dtype='float32'")
        if self.name == "torch":
            import torch

            previous = torch.backends.cuda.matmul.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = True
            try:
                yield True
            finally:
                torch.backends.cuda.matmul.allow_tf32 = previous
            return
        from cupy._core import _routines_linalg as linalg  # CuPy's compute-type switch has no public alias

        previous = linalg.get_compute_type(np.float32)
        linalg.set_compute_type(np.float32, linalg.COMPUTE_TYPE_TF32)
        try:
            yield True
        finally:
            linalg.set_compute_type(np.float32, previous)


def squared_norms(xp, A, axis: int):
    """sum(A * A, axis) in one pass over A, without the temporary A * A (xp.vecdot, which the standard asks
    to be given a negative axis)."""
    return xp.vecdot(A, A, axis=axis - A.ndim if axis >= 0 else axis)


def assign_difference(xp, array, index, a, b) -> None:
    """array[index] = a - b. On NumPy the difference is written in place (out=), without the temporary a - b
    and its copy: on the ADMM's M x P arrays that copy costs half as much again as the subtraction."""
    if array_api_compat.is_numpy_namespace(xp):
        np.subtract(a, b, out=array[index])
    else:
        array[index] = a - b


def take_rows(xp, array, index):
    """xp.take(array, index, axis=0); on NumPy by indexing, since np.take copies rows of a slice of columns 5
    times slower (340 rows of 12,336 columns of a 718 x 55,000 float64 X: 38 ms against 7)."""
    return array[index] if array_api_compat.is_numpy_namespace(xp) else xp.take(array, index, axis=0)


def replace_rows(xp, target, mask, source):
    """where(mask[:, None], source, target) for a few true rows of the (k,) bools `mask`. On NumPy the rows are
    copied into `target` in place (it must be the caller's own temporary): where() would pass over both whole
    arrays. Elsewhere where(), since selecting the rows would make the host wait for how many there are."""
    if array_api_compat.is_numpy_namespace(xp):
        target[mask] = source[mask]
        return target
    return xp.where(mask[:, None], source, target)


def backend(device="cpu") -> Backend:
    """The Backend for `device`: "cpu" (NumPy); "cuda" or "cuda:K" (CuPy when installed, otherwise torch); a
    torch.device (torch tensors there, CPU included); an array_api_strict.Device; a cupy.cuda.Device."""
    if isinstance(device, str):
        kind, _, index = device.partition(":")
        if device == "cpu":
            return Backend(array_api_compat.array_namespace(np.empty(0)), "cpu", "numpy")
        if kind in ("cuda", "gpu") and (index == "" or index.isdigit()):
            return _cuda_backend(int(index or 0))
        raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:K' or a device object, got {device!r}")
    module = type(device).__module__.split(".")[0]
    if module == "torch":
        import torch

        return Backend(array_api_compat.array_namespace(torch.empty(0)), device, "torch")
    if module == "array_api_strict":
        import array_api_strict

        return Backend(array_api_strict, device, "array_api_strict")
    if module == "cupy":
        import cupy

        return Backend(array_api_compat.array_namespace(cupy.empty(0)), device, "cupy")
    raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:K', a torch.device or an array API device, got {device!r}")


def _cuda_backend(index: int) -> Backend:
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() > index:
            cupy.cuda.Device(index).use()
            return Backend(array_api_compat.array_namespace(cupy.empty(0)), cupy.cuda.Device(index), "cupy")
    except Exception:  # no CuPy, no driver, no such device: try torch
        pass
    import torch

    if not torch.cuda.is_available() or torch.cuda.device_count() <= index:
        raise ValueError(f"device='cuda:{index}' needs an NVIDIA GPU (through CuPy, pip install 'nettrim[gpu]', or "
                         "torch built with CUDA); none was found")
    return Backend(array_api_compat.array_namespace(torch.empty(0)), torch.device("cuda", index), "torch")


def describe(device) -> str:
    """A short name of `device` for reports (info["device"])."""
    return device if isinstance(device, str) else str(device)
