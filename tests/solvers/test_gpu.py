"""The same ADMM code on a CUDA device (CuPy, or torch without it): same answers as NumPy (skipped without a GPU)."""

import numpy as np
import pytest

from instances import random_problem
from solvers import solve
from solvers.memory import memory_limit_for

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("per_neuron", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cuda_matches_cpu(per_neuron, dtype):
    problem = random_problem(21, N=40, P=500, M=8, per_neuron=per_neuron, cascade=True)
    cpu = solve(problem, dtype=dtype)
    gpu = solve(problem, device="cuda", dtype=dtype)
    assert gpu.status == "optimal", gpu.message
    assert isinstance(gpu.U, np.ndarray)
    assert gpu.objective == pytest.approx(cpu.objective, rel=5e-3)
    assert np.all(np.asarray(gpu.fit) <= np.asarray(problem.eps) * (1 + 1e-3))
    assert gpu.max_violation <= 1e-5 * np.abs(problem.Y).max()


def test_cuda_chunks_and_tf32():
    problem = random_problem(22, N=40, P=2000, M=24, per_neuron=True, cascade=True)
    cpu = solve(problem, dtype="float32")
    chunked = solve(problem, device="cuda", dtype="float32", memory_limit=2_000_000)
    assert chunked.info.get("chunks", 1) > 1
    assert chunked.objective == pytest.approx(cpu.objective, rel=5e-3)
    fast = solve(problem, device="cuda", dtype="float32", tf32=True)
    assert fast.info["tf32"] is True and fast.status == "optimal", fast.message
    assert np.all(np.asarray(fast.fit) <= np.asarray(problem.eps) * (1 + 1e-3))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cuda_streams_an_x_that_leaves_no_room(dtype):
    """X kept on the host and moved in blocks of samples at every product: the CPU's iteration, same answers."""
    problem = random_problem(23, N=200, P=3000, M=8, per_neuron=True, cascade=True)
    limit = memory_limit_for(problem, 3, dtype, streamed=True)
    assert limit < memory_limit_for(problem, 1, dtype)
    cpu = solve(problem, dtype=dtype)
    gpu = solve(problem, device="cuda", dtype=dtype, memory_limit=limit)
    assert gpu.info["sample_blocks"] > 1 and gpu.info["chunks"] == 3
    assert gpu.status == "optimal", gpu.message
    assert gpu.objective == pytest.approx(cpu.objective, rel=5e-3)
    assert np.all(np.asarray(gpu.fit) <= np.asarray(problem.eps) * (1 + 1e-9))
    assert gpu.max_violation <= 1e-5 * np.abs(problem.Y).max()
