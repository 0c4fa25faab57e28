"""A layer program as blocks of neurons (their results become one with result.merge_results).

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
from .copies import distinct_rows
from .problem import LayerProblem
from .sufficient import compressed


def neuron_blocks(problem: LayerProblem, count: int, min_size: int = 1) -> list[slice]:
    """Split the M neurons into at most `count` contiguous blocks of near-equal size, none smaller than
    `min_size` (a block repeats the layer's factorization, so tiny blocks cost more than they save); a
    scalar budget or the rows' objective (both couple the neurons) gives one block."""
    M = problem.shape[2]
    if not problem.per_neuron or problem.rows:
        return [slice(0, M)]
    count = max(1, min(int(count), M // max(int(min_size), 1)))
    edges = np.linspace(0, M, count + 1).round().astype(int)
    return [slice(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a]


def block_options(problem: LayerProblem, backend: str, options: dict) -> dict:
    """The solver options every block shares: the layer's iteration constants fixed for the ADMM (those of the
    program solve() iterates on: over X's distinct rows, which every block's solve merges alike (copies.py), and
    over its sufficient statistics when it is compressed (sufficient.py), whose rows are the blocks' own)."""
    if backend != "admm":
        return dict(options)
    program, merged_options, _ = distinct_rows(problem, options)
    program, _ = compressed(program)
    return dict(options, **iteration_constants(program, **merged_options))
