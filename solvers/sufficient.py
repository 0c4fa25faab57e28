"""A linear layer's program over at most N samples instead of P: the same program, written with its sufficient
statistics.

Without a ReLU the constraint ||u_m^T X - y_m|| <= eps_m reads X only through X X^T, X y_m^T and ||y_m||^2. With
the thin singular value decomposition X = V S Q^T (N x k, k x k, k x P; k = rank X <= N),

    u^T X - y = (u^T V S - y Q) Q^T - y (I - Q Q^T),   so   ||u^T X - y||^2 = ||u^T Xs - ys||^2 + r,

with Xs = V S (N x k), ys = y Q = (X y^T)^T V S^-1 (length k) and r = ||y||^2 - ||ys||^2, the part of y that no
weights can reach. The program over (Xs, Ys) with eps_s^2 = eps^2 - r (per neuron, or r summed over the neurons for
a layer budget) has the same feasible weights and the same objective, hence the same solutions and the same lower
bounds, while an iteration costs O(N k M) instead of O(N P M). V and S come from the eigendecomposition of X X^T
in float64; directions whose eigenvalue is below RANK_TOLERANCE times the largest are left out (they move the
response by at most sqrt(RANK_TOLERANCE) s_max |u^T v|) and the compressed budget aims inside by MARGIN ||y||^2
(r is a difference of squares). Every number reported is measured again on the original program (make_result),
and a neuron reported "optimal" whose weights miss the original budget becomes "inaccurate".

A budget below sqrt(r) cannot be met by any weights: r > eps^2 (by more than MARGIN ||y||^2, beyond rounding) is a
certificate of infeasibility, and such neurons (or a layer whose summed r exceeds its budget) are reported
"infeasible"; eps_s is then 0 for them (the least-squares weights on X's row space come closest).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from .memo import per_array
from .problem import LayerProblem
from .result import STATUSES, LayerResult, make_result, summarize_statuses

#: Eigenvalues of X X^T below this fraction of the largest are left out.
RANK_TOLERANCE = 1e-13
#: A program is compressed only when its samples are at least this many times its rank.
MIN_REDUCTION = 2
#: How far inside the budget the compressed program aims: eps_s^2 = eps^2 - r - MARGIN ||y||^2.
MARGIN = 1e-12


@dataclass(frozen=True)
class Statistics:
    """What the compression replaced: P samples by k, and the neurons (or the layer) certified infeasible."""

    samples: int
    rank: int
    infeasible: np.ndarray  # (M,) bools (all equal for a layer budget)


def compressible(problem: LayerProblem) -> bool:
    """A linear program with more samples than MIN_REDUCTION times its inputs (without a ReLU's Omega^c
    constraints, every sample enters only through the sufficient statistics)."""
    N, P, _ = problem.shape
    return problem.activation == "linear" and P >= MIN_REDUCTION * N


@per_array
def row_space(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(S, V): X's singular values above the rank tolerance and their left singular vectors (N, k), from the
    eigendecomposition of X X^T (kept while X lives: memo.py)."""
    # a general product: NumPy's X @ X.T is BLAS syrk, whose rounding differed between a process and an
    # executor's workers on the same X, and the solve must not depend on where it runs
    eigenvalues, vectors = np.linalg.eigh(X @ np.ascontiguousarray(X.T))
    kept = eigenvalues > RANK_TOLERANCE * max(float(eigenvalues[-1]), 0.0)
    return np.sqrt(eigenvalues[kept]), vectors[:, kept]


@per_array
def zero_rows(X: np.ndarray) -> np.ndarray:
    """(N,) bools: the rows of X that are 0 on every sample (kept while X lives)."""
    return ~np.any(X != 0, axis=1)


@per_array
def moments(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """X Y^T (N, M), kept while X and Y live (a budget search's programs share both)."""
    return X @ Y.T


def compress(problem: LayerProblem) -> tuple[LayerProblem, Statistics] | None:
    """The program over (Xs, Ys, eps_s) of the module docstring, or None when X's rank is not below P /
    MIN_REDUCTION (nothing to gain)."""
    X, Y = problem.X, problem.Y
    singular, vectors = row_space(X)
    if not singular.size or MIN_REDUCTION * singular.size > X.shape[1]:
        return None
    Xs = vectors * singular
    Xs[zero_rows(X)] = 0.0  # an input that is always 0 stays exactly 0 (not eigh's rounding)
    Ys = (moments(X, Y).T @ vectors) / singular
    energy = np.sum(Y * Y, axis=1)
    unreachable = np.maximum(energy - np.sum(Ys * Ys, axis=1), 0.0)
    if problem.per_neuron:
        slack = problem.eps ** 2 - unreachable
        infeasible = slack < -MARGIN * energy
        eps = np.sqrt(np.maximum(slack - MARGIN * energy, 0.0))
    else:
        slack = problem.eps ** 2 - unreachable.sum()
        infeasible = np.full(Y.shape[0], slack < -MARGIN * energy.sum())
        eps = float(np.sqrt(max(slack - MARGIN * energy.sum(), 0.0)))
    compressed = LayerProblem(Xs, Ys, eps, "linear", None,
                              problem.original_weights, problem.l1_weights, problem.structure, problem.group_weights,
                              problem.group_size)
    return compressed, Statistics(X.shape[1], singular.size, infeasible)


def compressed(problem: LayerProblem) -> tuple[LayerProblem, Statistics | None]:
    """The program solve() iterates on: compress(problem) when it is compressible and gains, else the problem
    itself (statistics None)."""
    if compressible(problem):
        shorter = compress(problem)
        if shorter is not None:
            return shorter
    return problem, None


def expand_result(problem: LayerProblem, statistics: Statistics, result: LayerResult) -> LayerResult:
    """The compressed program's result as the original program's: the same U, measured on the original data; a
    neuron (or, with a layer budget, the layer) called "optimal" that misses the original budget is "inaccurate"."""
    info = dict(result.info, compressed_samples=[statistics.samples, statistics.rank])
    status, message = result.status, result.message
    measured = make_result(problem, result.U, status=status, message=message, iterations=result.iterations,
                           seconds=result.seconds, backend=result.backend, info=info)
    missed = ~problem.result_within_budget(measured, 0.0, 0.0)
    statuses = info.get("neuron_statuses")
    if statuses is not None:
        statuses = np.where(missed & (statuses == "optimal"), "inaccurate", statuses)
        statuses = np.where(statistics.infeasible, "infeasible", statuses).astype(object)
        counts = {name: int(np.sum(statuses == name)) for name in STATUSES}
        status, message = summarize_statuses(counts, problem.per_neuron)
        info.update(neuron_statuses=statuses, neuron_status=counts)
    elif statistics.infeasible.any():
        status, message = "infeasible", "the budget is below the part of Y that no weights reach (certified)"
    elif status == "optimal" and missed.any():
        status, message = "inaccurate", f"{message}; the weights miss the budget on the original samples"
    return dataclasses.replace(measured, status=status, message=message, info=info)
