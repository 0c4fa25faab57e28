"""A layer program as blocks of neurons, and the blocks' results as one layer result.

With per-neuron budgets eps_m the program separates: minimize sum_m ||u_m||_1 subject to constraints on row m
alone is M independent programs, so any partition of the neurons into blocks solves the layer, block by block
and on as many workers as there are blocks. A scalar (layer) budget couples the neurons and stays one block.

For the ADMM every block gets the layer's iteration constants (rho, beta, max|Y|: admm.iteration_constants),
so each neuron follows the same iteration as in the whole layer and the blocks' U equals the one-piece U up to
floating-point summation order.
"""

from __future__ import annotations

import numpy as np

from .admm import iteration_constants
from .problem import LayerProblem
from .result import LayerResult, make_result, summarize_statuses


def neuron_blocks(problem: LayerProblem, count: int, min_size: int = 1) -> list[slice]:
    """Split the M neurons into at most `count` contiguous blocks of near-equal size, none smaller than
    `min_size` (a block repeats the layer's factorization, so tiny blocks cost more than they save); a
    scalar budget gives one block."""
    M = problem.shape[2]
    if not problem.per_neuron:
        return [slice(0, M)]
    count = max(1, min(int(count), M // max(int(min_size), 1)))
    edges = np.linspace(0, M, count + 1).round().astype(int)
    return [slice(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a]


def block_options(problem: LayerProblem, backend: str, options: dict) -> dict:
    """The solver options every block shares: the layer's iteration constants fixed for the ADMM."""
    if backend != "admm":
        return dict(options)
    return dict(options, **iteration_constants(problem, **options))


def merge_results(problem: LayerProblem, blocks: list[slice], results: list[LayerResult],
                  seconds: float) -> LayerResult:
    """One LayerResult for the layer from its blocks' results (measured again on the whole layer).

    status: the worst block's; iterations: the most any block took; seconds: the wall time given;
    info["blocks"]: each block's neurons, status, iterations and seconds.
    """
    if len(results) == 1 and blocks[0] == slice(0, problem.shape[2]):
        result = results[0]
        return make_result(problem, result.U, status=result.status, message=result.message,
                           iterations=result.iterations, seconds=seconds, backend=result.backend, info=result.info)
    N, _, M = problem.shape
    U = np.zeros((N, M))
    for block, result in zip(blocks, results, strict=True):
        U[:, block] = result.U
    pairs = list(zip(blocks, results, strict=True))
    info = {"blocks": [{"neurons": [block.start, block.stop], "status": result.status,
                        "iterations": result.iterations, "seconds": result.seconds} for block, result in pairs]}
    counts = [result.info.get("neuron_status") for result in results]
    if all(count is not None for count in counts):
        info["neuron_status"] = {key: sum(count.get(key, 0) for count in counts) for key in counts[0]}
        status, message = summarize_statuses(info["neuron_status"], per_neuron=True)
    else:
        status, _ = summarize_statuses({result.status: 1 for result in results}, per_neuron=False)
        message = "; ".join(f"neurons {block.start}:{block.stop}: {result.message}" for block, result in pairs)
    return make_result(problem, U, status=status, message=message,
                       iterations=max(result.iterations for result in results), seconds=seconds,
                       backend=results[0].backend, info=info)
