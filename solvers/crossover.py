"""Crossover: the neurons the ADMM leaves "inaccurate" or "suboptimal" finished by the interior-point reference.

The ADMM converges slowly in its tail on some programs, and a neuron that converged by its residuals can sit
1 to 2% above the optimum, more than the gap tolerance. Measured on squeezenet1_1's expand layers (random
weights, relu, N = 17 to 289 inputs, P = 576 to 1,000): the sparse iterate exceeded its Omega^c bound by
about the primal tolerance, the restoration round lowered the whole bound by twice that, and the program so
tightened has an optimum 1.0 to 1.6% larger than the user's, while the certified bound stayed within 0.2% of
the true optimum. Tighter residual tolerances fixed those neurons but left others of the same layer at the
iteration cap. An interior-point method has no such tail: CVXPY + Clarabel solves such a neuron in 0.04 s
(N = 17) to 0.4 s (N = 289), so a trim hands it the few neurons left "inaccurate" when they are small enough.
A linear program with many samples is handed over on its sufficient statistics (sufficient.py: the same program
over k <= N samples): one neuron of a ResNet-20 conv (N = 145, P = 20,000) took Clarabel 13.4 s on its samples.
"""

from __future__ import annotations

import time

import numpy as np

from .problem import LayerProblem, column_l1
from .reference import solve_reference
from .result import LayerResult, make_result, summarize_statuses
from .sufficient import compressed, compressible, expand_result

#: The most entries a crossover takes on, N x P per neuron handed over (N x k for a linear program over its
#: sufficient statistics): about 10 s of Clarabel (0.4 s a neuron of N = 289, P = 576). Larger leftovers stay
#: "inaccurate" (the ADMM's weights, within budget or not).
MAX_ENTRIES = 5_000_000
#: "suboptimal" neurons (within budget, their l1 proven within the gap tolerance widened after gap_patience) are
#: finished only while the reference sees at most this many entries for them all (N x P each; N x k, k <= N, for a
#: linear program over its sufficient statistics): a relu neuron of N = 145 inputs and P = 5,000 samples took
#: Clarabel 6 s (29 s of a 31 s layer in a default cascade trim of ResNet-20).
SUBOPTIMAL_ENTRIES = 250_000
#: The Omega^c excess (relative to max|Y|) a finished neuron may have: the ADMM's violation_tol.
VIOLATION_TOL = 1e-5


def finish_inaccurate(problem: LayerProblem, result: LayerResult, max_entries: int = MAX_ENTRIES) -> LayerResult:
    """`result` (the ADMM's) with its "inaccurate" neurons (and its "suboptimal" ones, up to SUBOPTIMAL_ENTRIES)
    solved again by the reference (CVXPY + Clarabel at its high accuracy, 1e-9, which aims inside the budget; at
    its default, 1e-8, fits ended up to 2.5e-8 of eps over the budget). Where Clarabel ends optimal within the
    budget, the neuron is "optimal" (info["crossover"] counts them) and keeps the cheaper of the two answers that
    keep the budget: the ADMM's weights, when they keep it at no more l1 than Clarabel's optimum, are proven by
    it. A layer budget or the rows' objective couples the neurons: then the whole layer is solved again. Without
    per-neuron statuses, or beyond max_entries, `result` is returned as it is."""
    statuses = result.info.get("neuron_statuses")
    if statuses is None:
        return result
    coupled = not problem.per_neuron or problem.rows
    N, P, _ = problem.shape
    entries = N * (min(N, P) if compressible(problem) else P)  # what the reference sees of each neuron
    suboptimal = statuses == "suboptimal"
    if entries * suboptimal.sum() > SUBOPTIMAL_ENTRIES:
        suboptimal[:] = False
    redo = np.flatnonzero((statuses == "inaccurate") | suboptimal)
    if coupled and redo.size:
        redo = np.arange(problem.shape[2])
    if not redo.size or entries * redo.size > max_entries:
        return result
    start = time.perf_counter()
    part = problem if coupled else problem.neurons(redo)
    reference = _solved_by_reference(part)
    reference.U = pulled_inside(part, reference.U)
    proven, ours_cheaper = _compared(part, reference, result.U[:, redo], coupled)
    if not proven.any():
        return result
    U, statuses = result.U.copy(), statuses.copy()
    taken = proven & ~ours_cheaper
    U[:, redo[taken]] = reference.U[:, taken]
    statuses[redo[proven]] = "optimal"
    counts = {status: int(np.sum(statuses == status)) for status in result.info["neuron_status"]}
    overall, message = summarize_statuses(counts, problem.per_neuron)
    info = dict(result.info, neuron_statuses=statuses, neuron_status=counts, crossover=int(proven.sum()))
    return make_result(problem, U, status=overall,
                       message=f"{message}; {int(proven.sum())} neurons finished by interior point",
                       iterations=result.iterations, seconds=result.seconds + time.perf_counter() - start,
                       backend=result.backend, info=info)


def _solved_by_reference(part: LayerProblem) -> LayerResult:
    """solve_reference on `part`, over its sufficient statistics when it has them (a linear program with many
    samples); the answer measured on part's own samples either way."""
    program, statistics = compressed(part)
    reference = solve_reference(program)
    return reference if statistics is None else expand_result(part, statistics, reference)


def pulled_inside(part: LayerProblem, U: np.ndarray) -> np.ndarray:
    """U moved toward the original weights W0, U + t (W0 - U), by twice the least t that puts its fit within
    eps: Clarabel's fits end up to 2.5e-8 of eps over the budget it aims inside by 1e-8 (reference.BUDGET_MARGIN;
    a wider margin made it end "optimal_inaccurate" on other programs). The fit is convex in U, so
    fit(U + t (W0 - U)) <= (1 - t) fit(U) + t fit(W0) <= eps once fit(W0) < eps, as a trim's W0 has (its fit is 0,
    or in cascade mode the inherited part of eps); W0 keeps the Omega^c bound, so U's excess over it only shrinks.
    The l1 moves by t ||W0 - U||_1, t of order 1e-8. Without W0, U as it is."""
    W0 = part.original_weights
    if W0 is None:
        return U
    fit, fit0, eps = (np.asarray(part.evaluate(U)["fit"]), np.asarray(part.evaluate(W0)["fit"]),
                      np.asarray(part.eps))
    over = (fit > eps) & (fit0 < eps)
    t = np.where(over, (fit - eps) / np.where(over, fit - fit0, 1.0), 0.0)
    return U + np.minimum(2 * t, 1.0) * (W0 - U)


def _compared(part: LayerProblem, reference: LayerResult, ours: np.ndarray, coupled: bool):
    """(proven, ours_cheaper), (k,) bools: Clarabel's column is optimal and keeps the budget; the ADMM's keeps it
    too at no more cost."""
    optimal = np.array([status == "optimal" for status in reference.info["statuses"]])
    within = part.columns_within_budget(reference.U, 0.0, VIOLATION_TOL)
    ours_within = part.columns_within_budget(ours, 0.0, VIOLATION_TOL)
    if coupled:
        optimal = np.full(part.shape[2], bool(optimal.all()))
        cheaper = np.full(part.shape[2], part.objective(ours) <= part.objective(reference.U))
    else:
        cheaper = column_l1(ours, part.l1_weights) <= column_l1(reference.U, part.l1_weights)
    return optimal & within, ours_within & cheaper
