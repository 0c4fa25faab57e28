"""Inputs that are copies of one another, solved as one variable.

If rows i and j of X are equal, only u_i + u_j enters U^T X, and c_i |u_i| + c_j |u_j| >= min(c_i, c_j) |u_i + u_j|,
with equality when the sum sits on the cheaper copy. So the program over the distinct rows of X (each group of
copies once, its weight the sum of theirs, its cost the least of theirs) has the same responses and the same
optimal value, and a solution of it, put on the cheapest copy of each group (the first among equals; per neuron
for l1 weights) with 0 on the other copies, solves the original program with the same response and the same
objective. A certified lower bound on the merged program's optimum is one on the original's. The rows' group norm
with one row per group (group_size = 1) merges alike (||u_i|| + ||u_j|| >= ||u_i + u_j||); groups of several rows
are left as they are.

Copies are common: an adaptive average pooling that upsamples (VGG's classifier reads each of 512 channels at 49
positions when the images are 32 x 32: 25,088 inputs, 512 distinct), features constant on the calibration data,
and inputs that are always 0 (dead ReLUs, blank pixels). Rows are copies when their float64 values are equal
(0.0 and -0.0 alike).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import scipy.sparse

from .memo import per_array
from .problem import LayerProblem
from .result import LayerResult, make_result

#: Columns of an (N, M) array grouped at once: the temporaries of grouping its rows stay N x BLOCK_COLUMNS.
BLOCK_COLUMNS = 256


@dataclass(frozen=True)
class Copies:
    """The distinct rows of X: `first` (K,) the first row of each group, in X's order; `group` (N,) the group
    of every row (group[first[k]] = k)."""

    first: np.ndarray
    group: np.ndarray

    @cached_property
    def order(self) -> np.ndarray:
        """X's rows sorted by group (each group's rows in X's order)."""
        return np.argsort(self.group, kind="stable")

    @cached_property
    def starts(self) -> np.ndarray:
        """Where each group begins in `order`."""
        return np.concatenate([[0], np.cumsum(np.bincount(self.group, minlength=self.first.size))[:-1]])

    def sums(self, A: np.ndarray) -> np.ndarray:
        """(K, ...) the sum of A's rows over each group (a sparse K x N indicator times A)."""
        N = self.group.size
        indicator = scipy.sparse.csr_array((np.ones(N), (self.group, np.arange(N))), shape=(self.first.size, N))
        return indicator @ A

    def least(self, A: np.ndarray) -> np.ndarray:
        """(K, ...) the least of A's rows over each group."""
        if A.ndim == 1:
            return self.least(A[:, None])[:, 0]
        return np.hstack([np.minimum.reduceat(A[:, block][self.order], self.starts, axis=0)
                          for block in _column_blocks(A.shape[1])])


def _column_blocks(M: int) -> list[slice]:
    return [slice(first, first + BLOCK_COLUMNS) for first in range(0, max(M, 1), BLOCK_COLUMNS)]


def find_copies(X: np.ndarray) -> Copies | None:
    """The groups of equal rows of X, or None when its rows are distinct. Rows are grouped by a 128-bit digest of
    their values and the groups then checked for exact equality (None on a digest collision: nothing is merged)."""
    digests = np.array([hashlib.blake2b(np.ascontiguousarray(row + 0.0).tobytes(), digest_size=16).digest()
                        for row in X], dtype="S16")
    _, first, inverse = np.unique(digests, return_index=True, return_inverse=True)
    if first.size == X.shape[0]:
        return None
    by_position = np.argsort(first)  # number the groups in the order of their first rows
    renumber = np.empty_like(by_position)
    renumber[by_position] = np.arange(first.size)
    copies = Copies(first[by_position], renumber[inverse.reshape(-1)])
    others = np.flatnonzero(copies.first[copies.group] != np.arange(X.shape[0]))
    if not np.array_equal(X[others], X[copies.first[copies.group[others]]]):
        return None
    return copies


def mergeable(problem: LayerProblem) -> bool:
    """Can the program's equal rows be merged (the module docstring)? All but a rows' objective over groups of
    several rows."""
    return not (problem.rows and problem.group_size > 1)


@per_array
def _distinct_rows_of(X: np.ndarray) -> tuple[Copies | None, np.ndarray | None]:
    """(copies, X's distinct rows), kept while X lives (memo.py): every program of a budget search on X merges
    the same rows into the same array."""
    copies = find_copies(X)
    return copies, None if copies is None else X[copies.first]


def merge(problem: LayerProblem, copies: Copies, initial=None,
          distinct: np.ndarray | None = None) -> tuple[LayerProblem, np.ndarray | None]:
    """The program over the distinct rows (`distinct`, X[copies.first] unless given), and the merged `initial`
    (N, M) weights (None stays None)."""
    def summed(array):
        return None if array is None else copies.sums(np.asarray(array, dtype=np.float64))

    def least(array):
        return None if array is None else copies.least(array)

    X = problem.X[copies.first] if distinct is None else distinct
    merged = LayerProblem(X, problem.Y, problem.eps, problem.activation, problem.upper,
                          summed(problem.original_weights), least(problem.l1_weights), problem.structure,
                          least(problem.group_weights), problem.group_size)
    return merged, summed(initial)


def spread(problem: LayerProblem, copies: Copies, U: np.ndarray) -> np.ndarray:
    """The original program's weights (N, M) from the merged program's U (K, M): each group's weight on its
    cheapest copy (the first among equals), 0 on the others."""
    cost = problem.l1_weights if problem.l1_weights is not None else (
        None if problem.group_weights is None else problem.group_weights[:, None])
    full = np.zeros((problem.shape[0], U.shape[1]))
    if cost is None:
        full[copies.first] = U
        return full
    for block in _column_blocks(U.shape[1]):
        full[:, block] = _on_cheapest_copies(copies, cost if cost.shape[1] == 1 else cost[:, block], U[:, block])
    return full


def _on_cheapest_copies(copies: Copies, cost: np.ndarray, U: np.ndarray) -> np.ndarray:
    """(N, k): U's (K, k) rows each on the first copy of its group whose cost (N, k or 1) is the group's least."""
    order, group = copies.order, copies.group[copies.order]
    cheapest = cost[order] == copies.least(cost)[group]
    seen = np.cumsum(cheapest, axis=0)  # per group, in X's order: the first cheapest copy is the one seen once
    before = np.concatenate([np.zeros((1, cost.shape[1]), dtype=seen.dtype), seen[copies.starts[1:] - 1]])
    placed = np.empty((cost.shape[0], U.shape[1]))
    placed[order] = np.where(cheapest & (seen - before[group] == 1), U[group], 0.0)
    return placed


def distinct_rows(problem: LayerProblem, options: dict) -> tuple[LayerProblem, dict, Copies | None]:
    """(program, options, copies): the program over X's distinct rows and the options with its `initial` merged,
    or the problem and options as they are (copies None) when X has no equal rows or they cannot be merged."""
    copies, distinct = _distinct_rows_of(problem.X) if mergeable(problem) else (None, None)
    if copies is None:
        return problem, options, None
    program, initial = merge(problem, copies, options.get("initial"), distinct)
    return program, (options if initial is None else dict(options, initial=initial)), copies


def spread_result(problem: LayerProblem, copies: Copies, result: LayerResult, seconds: float) -> LayerResult:
    """The merged program's result as the original program's: its U spread over the copies, measured again."""
    U = spread(problem, copies, result.U)
    info = dict(result.info, input_copies=int(problem.shape[0] - copies.first.size))
    return make_result(problem, U, status=result.status, message=result.message, iterations=result.iterations,
                       seconds=seconds, backend=result.backend, info=info)
