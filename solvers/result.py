"""One result type for every backend, in the spirit of scipy.optimize.OptimizeResult."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypedDict

import numpy as np

from .problem import LayerProblem

STATUSES = ("optimal", "max_iter", "infeasible", "inaccurate", "suboptimal")
#: The statuses from worst to best: a layer's status is the worst of its neurons'.
SEVERITY = ("infeasible", "max_iter", "inaccurate", "suboptimal", "optimal")
_DESCRIBED = {
    "optimal": "converged and within budget",
    "max_iter": "stopped before converging (max_iter, time_limit or callback)",
    "inaccurate": "converged but missed the budget after the restoration rounds, or kept it with an l1 not proven "
                  "within the gap tolerance of the optimum",
    "infeasible": "certified infeasible: the budget cannot be met",
    "suboptimal": "converged and within budget, with an l1 proven only within the gap tolerance widened after "
                  "gap_patience iterations, not within gap_tol (info['l1_lower_bound'] holds the bound)",
}


class ResultInfo(TypedDict, total=False):
    """LayerResult.info: what a backend adds beyond the result's fields (each key only where it applies).

    l1_lower_bound:      a certified lower bound on the optimal objective (ADMM; per neuron, (M,), for
                         per-neuron budgets, else the layer's float).
    neuron_status:       {status: count} over the neurons (ADMM), screened and cut-plane neurons included.
    neuron_statuses:     each neuron's status, an (M,) object array (ADMM).
    history:             [(iteration, active, primal, dual, min rho, max rho)] per check (ADMM).
    stopped_by_callback: a callback (or time_limit) stopped the solve (ADMM).
    repaired:            neurons accepted after a repair on their support (ADMM, solvers/repair.py).
    solved_on_supports:  neurons solved on their support by the interior point (ADMM, solvers/support_ipm.py).
    screened_neurons:    neurons whose zero weights keep their budget, not iterated (ADMM).
    cutting_planes:      nearly dead neurons solved by cutting planes (ADMM, solvers/cutting_planes.py).
    beta, rho_initial:   the ADMM's layer constants (admm.iteration_constants).
    device, dtype, tf32: where and in what precision the ADMM ran.
    chunks, sample_blocks: the memory plan's chunks of neurons and blocks of samples (solvers/memory.py).
    note:                a remark on a degenerate program (X = 0).
    blocks:              per neuron block: neurons, status, iterations, seconds (solvers/blocks.py).
    rounds:              per reweighting round: l1, nonzeros, status, iterations (solvers/reweight.py).
    input_copies:        rows of X merged away as copies of others (solvers/copies.py).
    compressed_samples:  [P, k]: a linear program solved over k sufficient samples (solvers/sufficient.py).
    crossover:           neurons finished by CVXPY + Clarabel (solvers/crossover.py).
    solver, statuses:    the reference backend's solver and each program's status (solvers/reference.py).
    """

    l1_lower_bound: float | np.ndarray
    neuron_status: dict
    neuron_statuses: np.ndarray
    history: list
    stopped_by_callback: bool
    repaired: int
    solved_on_supports: int
    screened_neurons: int
    cutting_planes: int
    beta: float
    rho_initial: float
    device: str
    dtype: str
    tf32: bool
    chunks: int
    sample_blocks: int
    note: str
    blocks: list
    rounds: list
    input_copies: int
    compressed_samples: list
    crossover: int
    solver: str
    statuses: list


@dataclass
class LayerResult:
    """What a backend returns; every number describes the returned U (never another iterate).

    U:               (N, M) trimmed weights, float64, with exact zeros.
    status:          "optimal" (within budget, and for the ADMM its l1 proven within gap_tol of the optimum),
                     "max_iter" (stopped unconverged), "infeasible" (the budget cannot be met: a certificate),
                     "inaccurate" (solver finished but U misses the budget or the Omega^c bound by more than the
                     tolerance, or keeps it with an l1 not proven within tolerance).
    objective:       ||U||_1.
    fit:             ||(U^T X - Y)_Omega||_F, a float for a scalar eps, an (M,) array for per-neuron eps.
    eps:             the budget, same form as fit.
    max_violation:   max over Omega^c of (U^T X - V)_+.
    response_error:  ||act(U^T X) - Y|| in fit's form (Proposition 1 bounds it by eps).
    info:            backend details (ResultInfo); the ADMM's info["l1_lower_bound"] is a certified lower bound on
                     the optimal objective, so 1 - sum(bound) / objective bounds how far U's l1 can be from the
                     optimum.
    """

    U: np.ndarray
    status: str
    message: str
    objective: float
    fit: float | np.ndarray
    eps: float | np.ndarray
    max_violation: float
    response_error: float | np.ndarray
    iterations: int
    seconds: float
    backend: str
    info: ResultInfo = field(default_factory=dict)
    violations: np.ndarray | None = None  # (M,) each column's max over Omega^c of (U^T X - V)_+

    @property
    def success(self) -> bool:
        return self.status == "optimal"

    @property
    def nonzeros(self) -> int:
        return int(np.count_nonzero(self.U))

    @property
    def l1_lower_bound(self) -> float | None:
        """sum(info["l1_lower_bound"]): no weights that meet the constraints have a lower objective (None when the
        backend gives no bound; a neuron without a bound counts as 0, which is always one)."""
        bound = self.info.get("l1_lower_bound")
        return None if bound is None else float(np.nansum(bound))

    @property
    def certified_gap(self) -> float | None:
        """1 - l1_lower_bound / objective: U's l1 is proven within this fraction of the optimum (None without a
        bound)."""
        bound = self.l1_lower_bound
        if bound is None:
            return None
        return 1.0 - bound / self.objective if self.objective else 0.0

    def __repr__(self) -> str:
        fit_ratio = np.max(np.asarray(self.fit) / np.maximum(np.asarray(self.eps), 1e-300))
        return (
            f"LayerResult(status={self.status!r}, backend={self.backend!r}, U={self.U.shape}, "
            f"nonzeros={self.nonzeros}, objective={self.objective:.6g}, max fit/eps={fit_ratio:.4g}, "
            f"max_violation={self.max_violation:.3g}, iterations={self.iterations}, seconds={self.seconds:.3g})"
        )


def make_result(problem: LayerProblem, U: np.ndarray, *, status: str, message: str, iterations: int,
                seconds: float, backend: str, info: dict | None = None) -> LayerResult:
    """Measure U exactly on the problem and wrap it, so reported numbers always belong to the returned U."""
    measures = problem.evaluate(U)

    def shaped(value):  # an array per neuron (or per group of a GroupedProblem), a float for a layer budget
        return np.asarray(value, dtype=np.float64) if np.ndim(value) else float(value)

    return LayerResult(
        U=U, status=status, message=message, objective=measures["objective"], fit=shaped(measures["fit"]),
        eps=problem.eps, max_violation=measures["max_violation"],
        response_error=shaped(measures["response_error"]), iterations=iterations, seconds=seconds,
        backend=backend, info=info or {}, violations=measures["violations"],
    )


def within_budget(problem: LayerProblem, result: LayerResult, fit_rtol: float, violation_tol: float) -> bool:
    """Does the result keep fit <= eps (1 + fit_rtol) and the Omega^c violation <= violation_tol max|Y|
    (every neuron, for per-neuron budgets)? The test is LayerProblem.columns_within_budget's."""
    return bool(problem.columns_within_budget(result.U, fit_rtol, violation_tol).all())


def summarize_statuses(counts: dict[str, int], per_neuron: bool) -> tuple[str, str]:
    """The layer's status (the worst one counted) and a message from per-neuron status counts."""
    overall = next(status for status in SEVERITY if counts.get(status) or status == "optimal")
    if not per_neuron:
        return overall, f"layer {_DESCRIBED[overall]}"
    total = sum(counts.values())
    return overall, "; ".join(f"{counts[status]} of {total} neurons {_DESCRIBED[status]}"
                              for status in SEVERITY if counts.get(status))


def merge_results(problem: LayerProblem, blocks: list[slice], results: list[LayerResult],
                  seconds: float, U: np.ndarray | None = None) -> LayerResult:
    """One LayerResult for the layer from its blocks' results (measured again on the whole layer); `U`, when
    given, already holds every block's weights (then the blocks' U are not copied again). The blocks are
    neurons of one LayerProblem, or the groups of a GroupedProblem (grouped.py).

    status: the worst block's; iterations: the most any block took; seconds: the wall time given;
    info["blocks"]: each block's neurons, status, iterations and seconds; info["l1_lower_bound"]: the blocks'
    bounds side by side (per neuron, or one per group with scalar budgets).
    """
    if len(results) == 1 and blocks[0] == slice(0, problem.shape[2]):
        result = results[0]
        return make_result(problem, result.U, status=result.status, message=result.message,
                           iterations=result.iterations, seconds=seconds, backend=result.backend, info=result.info)
    N, _, M = problem.shape
    if U is None:
        U = np.zeros((N, M))
        for block, result in zip(blocks, results, strict=True):
            U[:, block] = result.U
    pairs = list(zip(blocks, results, strict=True))
    info = {"blocks": [{"neurons": [block.start, block.stop], "status": result.status,
                        "iterations": result.iterations, "seconds": result.seconds} for block, result in pairs]}
    bounds = [result.info.get("l1_lower_bound") for result in results]
    if all(bound is not None and np.ndim(bound) <= 1 for bound in bounds):  # per neuron, or per group
        info["l1_lower_bound"] = np.concatenate([np.atleast_1d(bound) for bound in bounds])
    for name in ("repaired", "solved_on_supports"):
        counts = [result.info.get(name) for result in results]
        if all(count is not None for count in counts):
            info[name] = sum(counts)
    statuses = [result.info.get("neuron_statuses") for result in results]
    if all(each is not None for each in statuses):
        info["neuron_statuses"] = np.concatenate(statuses)
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
