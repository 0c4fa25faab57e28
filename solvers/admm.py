"""ADMM for the Net-Trim layer program, written once against the array API standard (arrays.py: NumPy on the CPU,
CuPy or torch on a GPU, array_api_strict as the GPU's stand-in in tests); the iteration itself is iteration.py.

Splitting. With Z = U^T X (M x P) and W = U (N x M), the program is

    minimize ||W||_1 + I_C(Z)   subject to   Z = U^T X,  W = U,

where C = {Z : ||(Z - Y)_Omega|| <= eps, Z_{Omega^c} <= V} (per row of Z when eps is per neuron). With the
penalty rho/2 ||U^T X - Z + Dz||^2 + rho beta/2 ||U - W + Dw||^2 (scaled duals Dz, Dw) one iteration is

    U  = (X X^T + beta I)^{-1} (X (Z - Dz)^T + beta (W - Dw))      rho cancels: one factorization per layer
    Z  = Proj_C(a U^T X + (1 - a) Z + Dz)                            over-relaxation a (1.6 by default)
    W  = soft(a U + (1 - a) W + Dw, 1 / (rho beta))                 exact zeros
    Dz, Dw += (relaxed point) - (new Z, W)

Because rho cancels from the U-step, adapting rho (residual balancing, OSQP style) costs nothing; with
per-neuron budgets the rows are independent programs and every neuron gets its own rho. (X X^T + beta I)^{-1}
comes from one eigendecomposition of the Gram matrix (the standard's linalg.eigh).

Equilibration. The rows of X are scaled to unit norm, X = D Xs with D = diag(||x_i||); in the variable
Us = D U the program is the same with the weighted objective sum_i |Us_i| / d_i, whose prox is still an
elementwise soft threshold. With beta = trace(Xs Xs^T) / min(N, P) (the mean nonzero eigenvalue; about 1 when
P >= N) this halved the iterations on the MNIST layer-1 benchmark compared with the published scaling (beta = 0.09
max diag X X^T on the raw data).

Acceleration. ADMM is a fixed-point iteration in zeta = (relaxed point + scaled dual); anderson.py extrapolates
it per neuron (type-II Anderson acceleration with a safeguard, as SCS 3 does), which removed about half of the
remaining iterations on the same benchmark.

Stopping uses primal and dual residuals with absolute and relative tolerances (Boyd et al. 2011, sec. 3.3),
per neuron, checked every `check_every` iterations (a check makes four X-products instead of one, five for a
relu layer, and the next iteration reuses two of them for its right-hand side). At a check the scaled dual also
gives each neuron a certified lower bound on its optimal l1 (certificates.dual_bound, weak duality, with lam also
moved along the widest row of X), and a neuron whose sparse
iterate keeps its budget exactly and whose objective is within gap_tol of that bound is final too, whatever
its residuals: that is what the user asks for (on MNIST layer 1 the duality gap reaches 0.5% well before the
residuals reach rel_tol). The scaled-dual increment is also tested as a
certificate of primal infeasibility. With per-neuron budgets a neuron that is final leaves the working set,
so the products shrink as the layer converges; info["l1_lower_bound"] keeps each neuron's certified bound.

Repair. A candidate (converged, or certified by its gap) whose sparse iterate misses its budget, nearly
always by a small excess over the Omega^c bound, is first repaired on the support it found (repair.py: a
small correction that puts the violated samples under their bound and keeps the fit within the budget; all the
candidates of a check together, as one batched computation); the repaired weights are final when they stay
within gap_tol of the certified bound, and info["repaired"] counts them. On MNIST layer 1 (P = 10,000) this
finishes most neurons 100-200 iterations earlier, with a lower l1. A neuron still iterating after
gap_patience iterations whose repairs keep failing may be solved on its support by the interior point and
certified on the whole layer by the duals of that solve (support_ipm.py; info["solved_on_supports"] counts them):
in a ReLU layer once, among the last neurons iterating, where its support is small enough to pay
(acceptance.STRAGGLERS, support_ipm.SUPPORT_COST).

The returned U is the sparse iterate W (or its repair), measured exactly in float64. The iteration aims inside
the budget by the fit error its tolerance allows (eps - 2 rel_tol ||y_Omega||). If a converged neuron is not
repaired and still misses its budget (its response error sqrt(fit^2 + ||(U^T X - V)_+ on Omega^c||^2) exceeds
eps) or the Omega^c bound by more than the tolerance, its internal budget is tightened by twice the measured
excess and its Omega^c bound by twice its largest violation, and its iteration continues from its state
(`restore_rounds` times at most, tolerances tightened from the third round on): what is returned as "optimal"
keeps Proposition 1's promise.
"""

from __future__ import annotations

import time

import numpy as np

from . import rowgroups
from .acceptance import REPAIR_BATCH_BYTES
from .arrays import Backend, backend, describe
from .certificates import within_gap
from .constraints import Program
from .cutting_planes import nearly_dead, solve_nearly_dead
from .factor import LayerInput
from .iteration import Iteration
from .memo import per_array
from .memory import memory_plan
from .problem import LayerProblem, column_l1
from .result import SEVERITY, LayerResult, make_result, merge_results, summarize_statuses, within_budget
from .settings import AdmmSettings

#: The soft threshold 1/(rho beta) at a warm start from the trained weights, in units of their mean |weight|:
#: where residual balancing moved most neurons of MNIST layer 1; a start from `initial` (a previous round's
#: solution, reweighting) keeps 1, being already near its answer (docs/solver.md).
THRESHOLD_OVER_MEAN_WEIGHT = 5.0
#: A neuron's objective is proven when it is within gap_tol of its certified bound or within this fraction of
#: objective_scale (a typical neuron's l1 before the solve), as solvers pair relative and absolute gap tolerances.
#: Measured need: dead neurons of mobilenet_v3_small's squeeze-and-excitation layers (Omega empty, the response
#: kept under a V of -1e-8) have optima of 1e-7 against 6 for their layer's neurons, and a dual bound of 0.
ABSOLUTE_GAP = 1e-6
def solve_admm(problem: LayerProblem, **options) -> LayerResult:
    """Solve `problem` by ADMM (module docstring; options: settings.AdmmSettings).

    Neurons whose zero weights already keep their budget (||y_m|| <= eps_m and V >= 0 on Omega^c) have the
    optimum u_m = 0 (objective 0 is the least possible); with per-neuron budgets they are screened out and
    only the others are iterated. A dead neuron (y_m = 0 everywhere) is one of them.

    device: "cpu" (NumPy), "cuda" / "cuda:K" (CuPy when installed, otherwise torch), a torch.device, or any
    array API device object (an array_api_strict.Device); the returned U is a NumPy array wherever it ran.
    time_limit (seconds): stop at the first check after it, as at max_iter (unconverged neurons: "max_iter").
    memory_limit (bytes): X and the working arrays of the iterated neurons must fit in it, or the neurons are
    solved in chunks that do (per-neuron budgets), each sharing X moved to the device and factored once; when X
    itself leaves no room for one neuron (or, with a layer budget, for all of them), it stays on the host and
    every product moves it to the device in blocks of samples (samples.py; info["sample_blocks"]). The default
    is 90% of the free device memory (on the CPU, of the memory the system reports available); a layer that
    fits in no plan raises MemoryLimitError (a ValueError) before anything large is allocated.
    tf32=True lets float32 products on CUDA use
    TF32 tensor cores (faster, 10-bit mantissas in the products; the returned weights are still measured in
    float64 against their budget); info["tf32"] says whether it was on.
    """
    settings = AdmmSettings.of(options).with_deadline()
    settings.check_for(problem)  # before screening, so bad options are refused even when nothing is iterated
    settings = _float32_or_wider(problem, settings.replace(**iteration_constants(problem, **options)))
    start = time.perf_counter()
    be = backend(settings.device)
    with be.tensor_float32(settings.dtype, settings.tf32) as tf32:
        active, few = _iterated(problem, settings)
        if (active.all() and not few.any()) or not problem.per_neuron:  # a layer budget: none is screened
            result = _solve_in_chunks(problem, settings, be)
            result.info.update(cutting_planes=0)
        else:
            result = _solve_screened(problem, settings, be, active, few, start)
    result.info["tf32"] = tf32
    return _within_the_users_gap(problem, result, settings)


#: float32 iterates hold squared norms of responses, inputs and weights: a program whose response scale (max|Y|),
#: typical input (cost_unit) or their ratio (the weights' scale) leaves [1 / FLOAT32_RANGE, FLOAT32_RANGE] is
#: iterated in float64 (at max|Y| = 1e19, or inputs of 1e-20 beside a bias row, float32 squares overflowed and
#: the ADMM ended "inaccurate", at 1e20 with NaN weights; float64 solved each at its optimum).
FLOAT32_RANGE = 2.0**40


def _float32_or_wider(problem: LayerProblem, settings: AdmmSettings) -> AdmmSettings:
    """`settings`, with dtype float64 instead of float32 where the data's scales leave float32's safe range
    (FLOAT32_RANGE; info["dtype"] says which ran). The scales are the layer's (iteration_constants), so every
    block of a layer's neurons decides alike."""
    if np.dtype(settings.dtype) != np.float32:
        return settings
    inputs = largest_magnitude(problem.X) or 1.0  # an input of zeros has no scale to keep
    scales = np.array([settings.response_scale, inputs, settings.cost_unit,
                       settings.response_scale / settings.cost_unit, settings.response_scale / inputs])
    if np.all((scales <= FLOAT32_RANGE) & (scales >= 1 / FLOAT32_RANGE)):
        return settings
    return settings.replace(dtype="float64")


@per_array
def largest_magnitude(X: np.ndarray) -> float:
    """max |X| (kept while X lives: memo.py)."""
    return float(np.max(np.abs(X)))


def _within_the_users_gap(problem: LayerProblem, result: LayerResult, settings: AdmmSettings) -> LayerResult:
    """`result` with its "optimal" neurons whose objective (measured in float64 on the returned U) is not within
    gap_tol of their certified lower bound (feasibility's rule, with the absolute gap) relabelled "suboptimal":
    after gap_patience iterations a neuron is accepted under a tolerance that grows with the iterations, and
    "optimal" says only the user's gap_tol. A layer budget or the rows' objective compares the layer's totals.
    The published stopping rule (stopping="step") certifies nothing, and a neuron without a bound is left as it
    is."""
    statuses, bound = result.info.get("neuron_statuses"), result.info.get("l1_lower_bound")
    if statuses is None or bound is None or settings.stopping == "step":  # the published rule claims no gap
        return result
    absolute_gap = ABSOLUTE_GAP * settings.objective_scale
    bound = np.asarray(bound, dtype=np.float64)
    if problem.per_neuron and not problem.rows:
        loose = ~within_gap(column_l1(result.U, problem.l1_weights), bound, settings.gap_tol, absolute_gap)
    else:
        loose = np.full(statuses.shape, not within_gap(problem.objective(result.U), float(np.max(bound)),
                                                       settings.gap_tol, absolute_gap))
    loose &= ~np.isnan(bound) if bound.shape == statuses.shape else ~np.isnan(bound).any()  # no bound: no claim
    relabel = (statuses == "optimal") & loose
    if not relabel.any():
        return result
    statuses = np.where(relabel, "suboptimal", statuses).astype(object)
    counts = {status: int(np.sum(statuses == status)) for status in SEVERITY}
    overall, message = summarize_statuses(counts, problem.per_neuron)
    return make_result(problem, result.U, status=overall, message=message, iterations=result.iterations,
                       seconds=result.seconds, backend=result.backend,
                       info=dict(result.info, neuron_statuses=statuses, neuron_status=counts))


def _iterated(problem: LayerProblem, settings: AdmmSettings) -> tuple[np.ndarray, np.ndarray]:
    """Host masks over the neurons: those that zero weights do not already solve (||y_m||_Omega <= eps_m and
    V >= 0 on Omega^c: solve_admm's docstring), and those of them nearly dead (cutting planes: nearly_dead)."""
    fit_of_zero = np.linalg.norm(np.where(problem.omega, problem.Y, 0.0), axis=1)
    upper_nonnegative = (np.ones(problem.shape[2], dtype=bool) if problem.upper is None
                         else np.all((problem.upper >= 0) | problem.omega, axis=1))
    active = ~((fit_of_zero <= problem.eps) & upper_nonnegative)
    return active, active & nearly_dead(problem) & (settings.stopping == "residuals")


def _solve_screened(problem: LayerProblem, settings: AdmmSettings, be: Backend, active: np.ndarray,
                    few: np.ndarray, start: float) -> LayerResult:
    """A per-neuron problem with screened neurons: zero weights for those not `active`, cutting planes for the
    `few` nearly dead (the ADMM for those they leave), the ADMM for the others, as one result."""
    N, _, M = problem.shape
    U = np.zeros((N, M))
    lower_bound = np.zeros(M)  # a screened neuron's optimum is 0
    cut = np.zeros(M, dtype=bool)
    if few.any():
        index = np.flatnonzero(few)
        U[:, index], lower_bound[index], cut[index] = solve_nearly_dead(problem.neurons(index), settings.violation_tol)
        active = active & ~cut
    result = None
    if active.any():
        if settings.initial is not None:
            settings = settings.replace(initial=np.asarray(settings.initial)[:, active])
        result = _solve_in_chunks(problem.neurons(active), settings, be)
        U[:, active] = result.U
        lower_bound[active] = result.info["l1_lower_bound"]
        if problem.rows:  # the layer's bound, not the neurons'
            lower_bound = result.info["l1_lower_bound"]
    statuses = np.full(M, "optimal", dtype=object)
    if result is not None:
        statuses[active] = result.info["neuron_statuses"]
    final = _assemble(problem, U, statuses, result.iterations if result else 0, start,
                      result.info if result else {})
    if result is None:
        final.message = ("every neuron keeps its budget with zero weights" if not cut.any()
                         else "every neuron solved by cutting planes or by zero weights")
    final.info.update(screened_neurons=int((~active & ~cut).sum()), cutting_planes=int(cut.sum()),
                      l1_lower_bound=lower_bound)
    return final


def _solve_in_chunks(problem: LayerProblem, settings: AdmmSettings, be: Backend) -> LayerResult:
    """The program in chunks of neurons (per-neuron budgets) and blocks of samples that fit
    settings.memory_limit: one chunk with X on the device when it fits."""
    M = problem.shape[2]
    chunk, samples_per_block, repairs = memory_plan(problem, settings, be)
    if chunk >= M and samples_per_block is None:
        return _solve_admm(problem, settings, repair_bytes=repairs)
    start = time.perf_counter()
    prepared = LayerInput.prepare(be, problem.X, np.dtype(settings.dtype), settings.equilibrate, settings.beta,
                                  samples_per_block, settings.u_step, _group_size(problem))
    if chunk >= M:
        result = _solve_admm(problem, settings, prepared=prepared, repair_bytes=repairs)
        result.info["sample_blocks"] = len(prepared.X.blocks)
        return result
    blocks = [slice(first, min(first + chunk, M)) for first in range(0, M, chunk)]
    results, U = [], np.zeros((problem.shape[0], M))
    for block in blocks:
        initial = None if settings.initial is None else np.asarray(settings.initial)[:, block]
        results.append(_solve_admm(problem.neurons(block), settings.replace(initial=initial), prepared=prepared,
                                   repair_bytes=repairs))
        U[:, block], results[-1].U = results[-1].U, None  # one copy of the layer's weights, not two
    merged = merge_results(problem, blocks, results, time.perf_counter() - start, U)
    merged.info["chunks"] = len(blocks)
    if samples_per_block is not None:
        merged.info["sample_blocks"] = len(prepared.X.blocks)
    return merged


def iteration_constants(problem: LayerProblem, *, rho=None, beta=None, response_scale=None, equilibrate=True,
                        warm_start=True, initial=None, objective_scale=None, **_) -> dict:
    """The layer-level numbers of the iteration, {"rho", "beta", "response_scale", "cost_unit", "objective_scale"},
    from the whole layer.

    beta balances the two consensus blocks: the mean nonzero eigenvalue trace(G)/min(N, P) of the (equilibrated)
    Gram matrix G by default (G = Xs Xs^T has at most min(N, P) of them: trace(G)/N when P >= N, trace(G)/P on a
    wide layer), 0.09 max diag G in the published form (its c0^2). rho sets the soft threshold of weight i,
    c_i / (rho beta) with c_i = 1 / ||x_i|| (equilibrated), at c_i T with T = THRESHOLD_OVER_MEAN_WEIGHT *
    mean|D W0| * cost_unit, where cost_unit, the median over X's rows of their mean |x| over nonzero entries,
    converts the cost to the data's units: scaling X and Y by s scales D W0 and cost_unit by s and c by 1 / s, so
    the iteration is the same whatever units the data are in (without equilibration c = 1 and cost_unit = 1).
    cost_unit is 0.60 on MNIST pixels in [0, 1] and 0.91 on LeNet-300-100's first hidden layer, near the
    thresholds of the measured start. The median keeps the bias row of ones out of it: beside features of norm
    1e-8 (a deep random network's squeeze-and-excitation layers) a mean would be the bias's, and every threshold a
    million times too large. W0 is zero on the rows where X is zero (_start_weights). From `initial` (a previous
    round's solution) the factor is 1; without a warm start T = max|Y| cost_unit. response_scale = max|Y| scales
    the primal tolerances, 1 / cost_unit the dual ones; objective_scale (_objective_scale) the absolute gap
    tolerance. Solving any subset of the neurons with these as options iterates every neuron exactly as the whole
    layer does (neuron blocks on several workers).
    """
    row_norms = np.linalg.norm(problem.X, axis=1)
    scale = rowgroups.equilibration_scale(row_norms, _group_size(problem)) if equilibrate else np.ones_like(row_norms)
    gram_diagonal = (row_norms / scale) ** 2  # trace and max diag of G need only the row norms
    if beta is None:
        beta = gram_diagonal.sum() / min(gram_diagonal.size, problem.shape[1])
    elif beta == "published":
        beta = 0.09 * gram_diagonal.max()
    beta = float(beta) if beta else 1.0  # beta = 0 only when X = 0, which needs no iteration
    cost_unit = _typical_magnitude(problem.X) if equilibrate and problem.X.any() else 1.0
    if response_scale is None:
        response_scale = problem.response_scale()
    response_scale = max(float(response_scale), 1e-300)
    if rho == "published":
        rho = 1.0 / beta
    elif rho is None:
        start_weights, factor = (_start_weights(problem, initial),
                                 THRESHOLD_OVER_MEAN_WEIGHT if initial is None else 1.0)
        threshold = factor * float(np.abs(np.asarray(start_weights) * scale[:, None]).mean()) if (
            warm_start and start_weights is not None) else 0.0
        if threshold == 0:  # no (nonzero) warm start: the response's scale; any scale when the response is 0
            threshold = float(np.max(np.abs(problem.Y))) or 1.0
        rho = 1.0 / (beta * threshold * cost_unit)
    if objective_scale is None:
        objective_scale = _objective_scale(problem, initial)
    return {"rho": float(rho), "beta": beta, "response_scale": response_scale, "cost_unit": cost_unit,
            "objective_scale": float(objective_scale)}


def _objective_scale(problem: LayerProblem, initial) -> float:
    """The objective of a typical neuron of the layer before the solve: the median over neurons of the weighted l1
    of `initial` or else the original weights (the layer's objective when its neurons are coupled); 0 without
    either. ABSOLUTE_GAP of it is the gap a neuron may keep whatever its own objective (iteration.py)."""
    start = problem.original_weights if initial is None else initial
    if start is None:
        return 0.0
    if problem.rows or not problem.per_neuron:
        return problem.objective(start)
    return float(np.median(column_l1(np.asarray(start), problem.l1_weights)))


def _typical_magnitude(X: np.ndarray) -> float:
    """The median over X's nonzero rows of the mean |x| over the row's nonzero entries."""
    nonzeros = np.count_nonzero(X, axis=1)
    means = np.abs(X).sum(axis=1)[nonzeros > 0] / nonzeros[nonzeros > 0]
    return float(np.median(means))


def _device_program(problem: LayerProblem, be: Backend) -> Program:
    """The user's program on the device (constraints.Program)."""
    coupled = not problem.per_neuron
    return Program(Y=be.asarray(problem.Y), omega=be.asarray(problem.omega),
                   upper=be.asarray(problem.upper) if problem.upper is not None else 0.0,
                   eps=float(problem.eps) if coupled else be.asarray(problem.eps),
                   l1_weights=_cost_weights(problem, be), relu=problem.activation == "relu", coupled=coupled,
                   rows=problem.rows, group_size=_group_size(problem))


def _solve_admm(problem: LayerProblem, settings: AdmmSettings, prepared: LayerInput | None = None,
                repair_bytes: int = REPAIR_BATCH_BYTES) -> LayerResult:
    """The ADMM of the module docstring on `settings` whose layer numbers are filled in (iteration_constants).
    Returns a LayerResult for the sparse iterate.

    Stop when every neuron's (or the layer's) primal and dual residuals are below
    abs_tol * sqrt(dim) * (max|Y| for the primal, 1 / cost_unit for the dual) + rel_tol * (scale of the iterates);
    `violation_tol` is relative to max|Y|.
    A neuron whose sparse iterate keeps its budget exactly and whose objective is within gap_tol (relative) of
    its certified lower bound, or within ABSOLUTE_GAP * objective_scale of it, is final as well; after
    gap_patience iterations the tolerance grows in proportion (2 gap_tol at 2 gap_patience), so that a neuron
    whose dual bound converges slowly still ends (each neuron's bound stays in info["l1_lower_bound"]);
    repair_misses=True first repairs a candidate that misses its budget on its support (module docstring).
    `stopping="step"` instead stops when ||U_k - U_{k-1}||_F < step_tol (the published rule).
    `initial` (N, M) starts the iteration there instead of at the original weights (reweighting rounds).
    `prepared` is the layer input factored once for several neuron chunks; repair_bytes what a batch of repairs
    may gather (the memory plan's reserve).
    """
    start = time.perf_counter()
    be = backend(settings.device)
    N, P, M = problem.shape
    coupled = not problem.per_neuron
    dt = np.dtype(settings.dtype)
    layer = prepared if prepared is not None else LayerInput.prepare(
        be, problem.X, dt, settings.equilibrate, float(settings.beta), side=settings.u_step,
        group_size=_group_size(problem))
    info = {"beta": float(settings.beta), "rho_initial": float(settings.rho), "device": describe(settings.device),
            "dtype": dt.name}
    if layer.x_norm == 0:  # X = 0: every U has the response 0, so U = 0 is optimal where 0 keeps the budget
        statuses = np.where(problem.columns_within_budget(np.zeros((N, M)), 0.0, 0.0), "optimal", "infeasible")
        return _assemble(problem, np.zeros((N, M)), statuses.astype(object), 0, start,
                         dict(info, note="X is zero: every weight has the response 0", history=[],
                              stopped_by_callback=False, repaired=0, solved_on_supports=0,
                              l1_lower_bound=np.zeros(M) if problem.per_neuron else 0.0))
    start_weights = _start_weights(problem, settings.initial)
    program = _device_program(problem, be)
    # Aim inside the budget by the fit error the tolerance allows (||W^T X - Z|| <~ rel_tol ||y_Omega||), so a
    # converged sparse iterate rarely needs a restoration round (the published rule aims at eps itself).
    margin = 2 * settings.rel_tol * np.linalg.norm(np.where(problem.omega, problem.Y, 0), axis=1)
    if settings.stopping == "step":
        margin = np.zeros_like(margin)
    iteration = Iteration(be, layer, program, (N, P, M),
                          be.asarray(start_weights) if settings.warm_start and start_weights is not None else None,
                          original_eps=problem.eps, margin=margin,
                          known_feasible=lambda: _known_feasible(problem), settings=settings,
                          absolute_gap=ABSOLUTE_GAP * settings.objective_scale, repair_bytes=repair_bytes)
    iterations, run_info = iteration.run(settings.callback)
    info.update(run_info)
    output = iteration.acceptance.output
    info["l1_lower_bound"] = output.bound if not (coupled or problem.rows) else float(output.bound[0])
    result = _assemble(problem, output.U, output.status, iterations, start, info)
    if settings.stopping == "step" and result.status == "optimal" and not within_budget(problem, result, 1e-9,
                                                                                        settings.violation_tol):
        result.status = "inaccurate"
        result.message += "; the returned iterate misses the budget or the Omega^c bound"
    return result


def _start_weights(problem: LayerProblem, initial) -> np.ndarray | None:
    """The warm start, `initial` or else the original weights, with zeros on the rows where X is zero: those
    weights change no response, so the optimum has them zero, and the iteration would shrink them by one soft
    threshold a step, which on badly scaled data (a zero row beside rows of norm 1e-8) is ~forever."""
    start = problem.original_weights if initial is None else initial
    if start is None:
        return None
    return np.where(np.any(problem.X != 0, axis=1)[:, None], np.asarray(start), 0.0)


def _group_size(problem: LayerProblem) -> int:
    """The rows per group of the rows' objective (1 for l1)."""
    return problem.group_size if problem.rows else 1


def _cost_weights(problem: LayerProblem, be: Backend):
    """The objective's weights on the device, (N, M) or None: C for l1, each group's c repeated over its rows."""
    if problem.rows:
        if problem.group_weights is None:
            return None
        N, _, M = problem.shape
        per_row = rowgroups.expand(np, problem.group_weights, problem.group_size, N)
        return be.asarray(np.repeat(per_row[:, None], M, axis=1))
    return None if problem.l1_weights is None else be.asarray(problem.l1_weights)


def _known_feasible(problem: LayerProblem) -> np.ndarray:
    """(M,) bools: the neurons whose original weights keep the user's budget (in cascade mode all of them, by
    construction). No certificate can prove such a neuron's program infeasible; one that seems to (rounding, on
    badly scaled data: measured on mobilenet_v3_small's squeeze-and-excitation layers) is not believed."""
    if problem.original_weights is None:
        return np.zeros(problem.shape[2], dtype=bool)
    return problem.columns_within_budget(problem.original_weights, 0.0, 0.0)


def _assemble(problem, U, statuses, iterations, start, info) -> LayerResult:
    counts = {status: int(np.sum(statuses == status)) for status in SEVERITY}
    overall, message = summarize_statuses(counts, problem.per_neuron)
    return make_result(problem, U, status=overall, message=message, iterations=iterations,
                       seconds=time.perf_counter() - start, backend="admm",
                       info=dict(info, neuron_status=counts, neuron_statuses=np.asarray(statuses, dtype=object)))
