"""The ADMM's memory plan: how many neurons a chunk solves and whether X stays on the device or moves to it in
blocks of samples (samples.py), within memory_limit (bytes; by default DEFAULT_MEMORY_SHARE of the free memory).
"""

from __future__ import annotations

import math

import numpy as np

from .acceptance import REPAIR_BATCH_BYTES
from .arrays import Backend
from .factor import factored_side
from .problem import LayerProblem
from .settings import AdmmSettings

#: The share of the free memory that the default memory_limit takes.
DEFAULT_MEMORY_SHARE = 0.9
#: The share of memory_limit (at most REPAIR_BATCH_BYTES) that a batch of repairs may gather.
REPAIR_SHARE = 0.1
#: The share of memory_limit that the blocks of an X kept on the host may take on the device (the rest holds
#: the neurons' working arrays): the transfers per product are all of X whatever the block size.
STREAMED_BLOCKS_SHARE = 0.25



class MemoryLimitError(ValueError):
    """A layer program that fits in no memory plan within memory_limit."""


def memory_sizes(problem: LayerProblem, dtype="float64", anderson: int = 5, u_step: str = "auto") -> dict:
    """The device memory the ADMM needs, estimated in bytes: {"per_neuron", "factorization", "X",
    "streamed_factorization"}.

    Per neuron, its rows of Y, Omega, V (float64) and about 14 + 2 * anderson P-long and 10 + 2 * anderson N-long
    arrays in the working precision (iterates, duals, temporaries, Anderson's memory); the factorization, three
    float64 matrices of the Gram side it factors with X on the device (factor.py: N x N, or P x P when P is the
    smaller), N x N for a streamed X; X on the device, in float64 and in the working precision.
    """
    N, P, _ = problem.shape
    itemsize = np.dtype(dtype).itemsize
    side = P if factored_side(N, P, u_step) == "samples" else N
    return {"per_neuron": P * (17 + itemsize * (14 + 2 * anderson)) + N * itemsize * (10 + 2 * anderson),
            "factorization": 3 * side * side * 8, "X": N * P * (8 + itemsize),
            "streamed_factorization": 3 * N * N * 8}


def memory_limit_for(problem: LayerProblem, neurons: int, dtype="float64", anderson: int = 5,
                     streamed: bool = False) -> int:
    """The memory_limit (bytes) at which the ADMM solves `neurons` neurons per chunk with X on the device, or
    (streamed=True, when that is less than X on the device needs) with X moved in blocks of samples."""
    sizes = memory_sizes(problem, dtype, anderson)
    if not streamed:
        planned = sizes["factorization"] + sizes["X"] + neurons * sizes["per_neuron"]
    else:
        planned = (sizes["streamed_factorization"]
                   + (neurons + 0.5) * sizes["per_neuron"] / (1 - STREAMED_BLOCKS_SHARE))
    return int(math.ceil(min(planned / (1 - REPAIR_SHARE), planned + REPAIR_BATCH_BYTES)))  # repair_reserve's inverse


def repair_reserve(limit: float | None) -> int:
    """Bytes the repairs' batches may gather within memory_limit (iteration.py): REPAIR_SHARE of it, at most
    REPAIR_BATCH_BYTES."""
    return REPAIR_BATCH_BYTES if limit is None else int(min(REPAIR_BATCH_BYTES, REPAIR_SHARE * limit))


def _streamed_blocks_bytes(N: int, samples_per_block: int) -> int:
    """The device room of a streamed X: two float64 blocks of its samples (one moving, one in use)."""
    return 2 * N * samples_per_block * 8


def memory_plan(problem: LayerProblem, settings: AdmmSettings, be: Backend) -> tuple[int, int | None, int]:
    """(neurons per chunk, samples per block of a streamed X or None for X on the device, bytes a repair batch
    may gather) within memory_limit.

    The repairs' reserve (repair_reserve) comes off the limit first. X stays on the device (memory_sizes)
    unless that leaves no room for the neurons that must be solved together (one, or all M with a layer budget);
    then two float64 blocks of its samples take at most STREAMED_BLOCKS_SHARE of what the factorization leaves.
    """
    N, P, M = problem.shape
    limit = settings.memory_limit
    if limit is None:
        free = be.free_memory()
        if free is None:
            return M, None, repair_reserve(None)
        limit = int(DEFAULT_MEMORY_SHARE * free)
    repairs = repair_reserve(limit)
    planned = limit - repairs
    sizes = memory_sizes(problem, settings.dtype, int(settings.anderson), settings.u_step)
    per_neuron = sizes["per_neuron"]
    together = 1 if problem.per_neuron and not problem.rows else M
    resident = sizes["factorization"] + sizes["X"]
    if planned - resident >= together * per_neuron:
        return int(min((planned - resident) // per_neuron, M)), None, repairs
    factorization = sizes["streamed_factorization"]
    samples_per_block = int(min(P, max(1, (STREAMED_BLOCKS_SHARE * (planned - factorization)) // (2 * N * 8))))
    fitting = (planned - factorization - _streamed_blocks_bytes(N, samples_per_block)) // per_neuron
    if fitting < together:
        what = ("not even one neuron of this layer" if together == 1 else
                "this layer, whose single (layer) budget couples the neurons so they cannot be chunked"
                if not problem.per_neuron else
                "this layer, whose rows' objective (structure='rows') couples the neurons so they cannot be chunked")
        default = "" if settings.memory_limit else " (90% of the free memory)"
        raise MemoryLimitError(
            f"memory_limit: {limit / 2**30:.2f} GiB{default} holds {what}: each neuron's arrays need "
            f"{per_neuron / 2**20:.1f} MiB (P = {P} samples), the factorization of X X^T {factorization / 2**20:.1f} "
            f"MiB; lower the number of samples P (max_samples) or raise memory_limit"
            + ("" if problem.per_neuron or problem.rows else " or use per-neuron budgets"))
    return int(min(fitting, M)), samples_per_block, repairs
