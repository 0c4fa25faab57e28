"""ADMM for the Net-Trim layer program, written once over an array module (NumPy on CPU, CuPy on GPU).

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
comes from one eigendecomposition of the Gram matrix, which both NumPy and CuPy provide.

Equilibration. The rows of X are scaled to unit norm, X = D Xs with D = diag(||x_i||); in the variable
Us = D U the program is the same with the weighted objective sum_i |Us_i| / d_i, whose prox is still an
elementwise soft threshold. With beta = trace(Xs Xs^T) / N (about 1) this halved the iterations on the MNIST
layer-1 benchmark compared with the published scaling (beta = 0.09 max diag X X^T on the raw data).

Acceleration. ADMM is a fixed-point iteration in zeta = (relaxed point + scaled dual); anderson.py extrapolates
it per neuron (type-II Anderson acceleration with a safeguard, as SCS 3 does), which removed about half of the
remaining iterations on the same benchmark.

Stopping uses primal and dual residuals with absolute and relative tolerances (Boyd et al. 2011, sec. 3.3),
per neuron, checked every `check_every` iterations (a check makes four X-products instead of one, and the
next iteration reuses two of them for its right-hand side). At a check the scaled dual also gives each neuron
a certified lower bound on its optimal l1 (feasibility.dual_bound, weak duality), and a neuron whose sparse
iterate keeps its budget exactly and whose objective is within gap_tol of that bound is final too, whatever
its residuals: that is what the user asks for (on MNIST layer 1 the duality gap reaches 0.5% well before the
residuals reach rel_tol). The scaled-dual increment is also tested as a
certificate of primal infeasibility. With per-neuron budgets a neuron that is final leaves the working set,
so the products shrink as the layer converges; info["l1_lower_bound"] keeps each neuron's certified bound.

Repair. A candidate (converged, or certified by its gap) whose sparse iterate misses its budget, nearly
always by a small excess over the Omega^c bound, is first repaired on the support it found (repair.py: a
small correction that puts the violated samples under their bound and keeps the fit within the budget); the
repaired weights are final when they stay within gap_tol of the certified bound, and info["repaired"] counts
them. On MNIST layer 1 (P = 10,000) this finishes most neurons 100-200 iterations earlier, with a lower l1.

The returned U is the sparse iterate W (or its repair), measured exactly in float64. The iteration aims inside
the budget by the fit error its tolerance allows (eps - 2 rel_tol ||y_Omega||). If a converged neuron is not
repaired and still misses its budget (its response error sqrt(fit^2 + ||(U^T X - V)_+ on Omega^c||^2) exceeds
eps) or the Omega^c bound by more than the tolerance, its internal budget is tightened by twice the measured
excess and its Omega^c bound by twice its largest violation, and its iteration continues from its state
(`restore_rounds` times at most, tolerances tightened from the third round on): what is returned as "optimal"
keeps Proposition 1's promise.
"""

from __future__ import annotations

import contextlib
import inspect
import time
from dataclasses import dataclass
from functools import partial

import numpy as np

from . import feasibility
from .anderson import memory_or_none
from .arrays import array_module, to_host
from .feasibility import accept_or_tighten, certify_infeasible, dual_bound
from .problem import LayerProblem
from .repair import repair_on_support
from .result import SEVERITY, LayerResult, make_result, merge_results, summarize_statuses, within_budget
from .samples import SampleBlocks

#: Options that make this ADMM the published Net-Trim solver (Aghasi et al., SIAM J. Math. Data Sci. 2020):
#: fixed rho = 1 on data scaled by c0 = 0.3 sqrt(max X X^T), no over-relaxation, no warm start, no
#: equilibration, stop when ||dU||_F < 5e-9 N M, and return the soft-thresholded iterate as it is.
PUBLISHED_OPTIONS = dict(
    rho="published", beta="published", adaptive_rho=False, relaxation=1.0, warm_start=False,
    equilibrate=False, stopping="step", restore=False, anderson=0,
)
#: Checks a neuron waits after a failed repair before trying again.
REPAIR_WAIT_CHECKS = 5
#: The soft threshold 1/(rho beta) at a warm start from the trained weights, in units of their mean |weight|.
#: Residual balancing moved most neurons of MNIST layer 1 (P = 10,000) from a threshold at 1 to 25 (193 of 288)
#: or 5 (81); starting at 5 took 10 to 25% off the layers of LeNet-300-100 and LeNet-5. A start from `initial`
#: (a previous round's solution, reweighting) keeps 1: at 5 the demo's second layer took 39 s instead of 21 s.
THRESHOLD_OVER_MEAN_WEIGHT = 5.0
#: The share of memory_limit that the blocks of an X kept on the host may take on the device (the rest holds
#: the neurons' working arrays): the transfers per product are all of X whatever the block size.
STREAMED_BLOCKS_SHARE = 0.25


def solve_admm(problem: LayerProblem, **options) -> LayerResult:
    """Solve `problem` by ADMM (module docstring; options: see _solve_admm).

    Neurons whose zero weights already keep their budget (||y_m|| <= eps_m and V >= 0 on Omega^c) have the
    optimum u_m = 0 (objective 0 is the least possible); with per-neuron budgets they are screened out and
    only the others are iterated. A dead neuron (y_m = 0 everywhere) is one of them.

    memory_limit (bytes): X and the working arrays of the iterated neurons must fit in it, or the neurons are
    solved in chunks that do (per-neuron budgets), each sharing X moved to the device and factored once; when X
    itself leaves no room for one neuron (or, with a layer budget, for all of them), it stays on the host and
    every product moves it to the device in blocks of samples (samples.py; info["sample_blocks"]). On CUDA the
    default is 90% of the free device memory, on the CPU no limit. tf32=True lets CuPy's float32 products use
    TF32 tensor cores (faster, 10-bit mantissas in the products; the returned weights are still measured in
    float64 against their budget); info["tf32"] says whether it was on.
    """
    _check_options(problem, options)  # before screening, so bad options are refused even when nothing is iterated
    options = dict(options, **iteration_constants(problem, **options))
    start = time.perf_counter()
    xp = array_module(options.get("device", "cpu"))
    with _tensor_float32(xp, options.get("dtype", "float64"), options.pop("tf32", False)) as tf32:
        fit_of_zero = np.linalg.norm(np.where(problem.omega, problem.Y, 0.0), axis=1)
        upper_nonnegative = (np.ones(problem.shape[2], dtype=bool) if problem.upper is None
                             else np.all((problem.upper >= 0) | problem.omega, axis=1))
        active = ~((fit_of_zero <= problem.eps) & upper_nonnegative)
        if active.all() or not problem.per_neuron:  # a layer budget couples the neurons: none is screened
            result = _solve_in_chunks(problem, options)
            result.info["tf32"] = tf32
            return result
        N, _, M = problem.shape
        U = np.zeros((N, M))
        lower_bound = np.zeros(M)  # a screened neuron's optimum is 0
        result = None
        if active.any():
            if options.get("initial") is not None:
                options["initial"] = np.asarray(options["initial"])[:, active]
            result = _solve_in_chunks(problem.neurons(active), options)
            U[:, active] = result.U
            lower_bound[active] = result.info["l1_lower_bound"]
    final = make_result(problem, U, status=result.status if result else "optimal",
                        message=(result.message if result else "every neuron keeps its budget with zero weights"),
                        iterations=result.iterations if result else 0, seconds=time.perf_counter() - start,
                        backend="admm", info=result.info if result else {})
    final.info.update(screened_neurons=int((~active).sum()), tf32=tf32, l1_lower_bound=lower_bound)
    return final


def _solve_in_chunks(problem: LayerProblem, options: dict) -> LayerResult:
    """The program in chunks of neurons (per-neuron budgets) and blocks of samples that fit
    options["memory_limit"]: one chunk with X on the device when it fits."""
    M = problem.shape[2]
    chunk, samples_per_block = _memory_plan(problem, options)
    if chunk >= M and samples_per_block is None:
        return _solve_admm(problem, **options)
    start = time.perf_counter()
    xp, dt = array_module(options.get("device", "cpu")), np.dtype(options.get("dtype", "float64"))
    prepared = _LayerInput.prepare(xp, problem.X, dt, options.get("equilibrate", True), options["beta"],
                                   samples_per_block)
    if chunk >= M:
        result = _solve_admm(problem, **options, prepared=prepared)
        result.info["sample_blocks"] = len(prepared.X.blocks)
        return result
    blocks = [slice(first, min(first + chunk, M)) for first in range(0, M, chunk)]
    results = []
    for block in blocks:
        chunk_options = dict(options, prepared=prepared)
        if options.get("initial") is not None:
            chunk_options["initial"] = np.asarray(options["initial"])[:, block]
        results.append(_solve_admm(problem.neurons(block), **chunk_options))
    merged = merge_results(problem, blocks, results, time.perf_counter() - start)
    merged.info["chunks"] = len(blocks)
    if samples_per_block is not None:
        merged.info["sample_blocks"] = len(prepared.X.blocks)
    return merged


def memory_sizes(problem: LayerProblem, dtype="float64", anderson: int = 5) -> dict:
    """The device memory the ADMM needs, estimated in bytes: {"per_neuron", "factorization", "X"}.

    Per neuron, its rows of Y, Omega, V (float64) and about 14 + 2 * anderson P-long and 10 + 2 * anderson N-long
    arrays in the working precision (iterates, duals, temporaries, Anderson's memory); the factorization, three
    N x N float64 matrices; X on the device, in float64 and in the working precision.
    """
    N, P, _ = problem.shape
    itemsize = np.dtype(dtype).itemsize
    return {"per_neuron": P * (17 + itemsize * (14 + 2 * anderson)) + N * itemsize * (10 + 2 * anderson),
            "factorization": 3 * N * N * 8, "X": N * P * (8 + itemsize)}


def memory_limit_for(problem: LayerProblem, neurons: int, dtype="float64", anderson: int = 5,
                     streamed: bool = False) -> int:
    """The memory_limit (bytes) at which the ADMM solves `neurons` neurons per chunk with X on the device, or
    (streamed=True, when that is less than X on the device needs) with X moved in blocks of samples."""
    sizes = memory_sizes(problem, dtype, anderson)
    if not streamed:
        return sizes["factorization"] + sizes["X"] + neurons * sizes["per_neuron"]
    return int(sizes["factorization"] + (neurons + 0.5) * sizes["per_neuron"] / (1 - STREAMED_BLOCKS_SHARE))


def _streamed_blocks_bytes(N: int, samples_per_block: int) -> int:
    """The device room of a streamed X: two float64 blocks of its samples (one moving, one in use)."""
    return 2 * N * samples_per_block * 8


def _memory_plan(problem: LayerProblem, options: dict) -> tuple[int, int | None]:
    """(neurons per chunk, samples per block of a streamed X or None for X on the device) within memory_limit.

    X stays on the device (memory_sizes) unless that leaves no room for the neurons that must be solved together
    (one, or all M with a layer budget); then two float64 blocks of its samples take at most
    STREAMED_BLOCKS_SHARE of what the factorization leaves.
    """
    N, P, M = problem.shape
    limit = options.get("memory_limit")
    device = options.get("device", "cpu")
    if limit is None:
        if device == "cpu":
            return M, None
        xp = array_module(device)
        limit = int(0.9 * (xp.cuda.Device().mem_info[0] + xp.get_default_memory_pool().free_bytes()))
    sizes = memory_sizes(problem, options.get("dtype", "float64"), int(options.get("anderson", 5)))
    per_neuron, factorization = sizes["per_neuron"], sizes["factorization"]
    together = 1 if problem.per_neuron else M
    resident = factorization + sizes["X"]
    if limit - resident >= together * per_neuron:
        return int(min((limit - resident) // per_neuron, M)), None
    samples_per_block = int(min(P, max(1, (STREAMED_BLOCKS_SHARE * (limit - factorization)) // (2 * N * 8))))
    fitting = (limit - factorization - _streamed_blocks_bytes(N, samples_per_block)) // per_neuron
    if fitting < together:
        what = ("not even one neuron of this layer" if problem.per_neuron else
                "this layer, whose single (layer) budget couples the neurons so they cannot be chunked")
        raise ValueError(
            f"memory_limit: {limit / 2**30:.2f} GiB holds {what}: each neuron's arrays need "
            f"{per_neuron / 2**20:.1f} MiB (P = {P} samples), the factorization of X X^T {factorization / 2**20:.1f} "
            f"MiB; lower the number of samples P (max_samples)" + ("" if problem.per_neuron else
                                                                  " or use per-neuron budgets"))
    return int(min(fitting, M)), samples_per_block


@contextlib.contextmanager
def _tensor_float32(xp, dtype, enabled: bool):
    """CuPy's float32 matrix products on TF32 tensor cores while the solve runs; yields whether they are."""
    if not enabled:
        yield False
        return
    if xp is np or np.dtype(dtype) != np.float32:
        raise ValueError("tf32=True needs device='cuda' and dtype='float32'")
    from cupy._core import _routines_linalg as linalg  # CuPy's compute-type switch has no public alias

    previous = linalg.get_compute_type(np.float32)
    linalg.set_compute_type(np.float32, linalg.COMPUTE_TYPE_TF32)
    try:
        yield True
    finally:
        linalg.set_compute_type(np.float32, previous)


def iteration_constants(problem: LayerProblem, *, rho=None, beta=None, response_scale=None, equilibrate=True,
                        warm_start=True, initial=None, **_) -> dict:
    """The layer-level numbers of the iteration, {"rho", "beta", "response_scale"}, from the whole layer.

    beta balances the two consensus blocks: the mean eigenvalue trace(G)/N of the (equilibrated) Gram matrix G
    by default (measured best on MNIST layers), 0.09 max diag G in the published form (its c0^2); rho sets the
    threshold 1/(rho beta) at THRESHOLD_OVER_MEAN_WEIGHT times the mean magnitude of the original weights, at the
    mean magnitude of `initial` when given, at X's scale without a warm start; response_scale = max|Y| scales
    the absolute tolerances. Solving any subset of the neurons with these as options iterates every neuron
    exactly as the whole layer does (neuron blocks on several workers).
    """
    row_norms = np.linalg.norm(problem.X, axis=1)
    scale = np.where(row_norms > 0, row_norms, 1.0) if equilibrate else np.ones_like(row_norms)
    gram_diagonal = (row_norms / scale) ** 2  # trace and max diag of G need only the row norms
    if beta is None:
        beta = gram_diagonal.sum() / gram_diagonal.size
    elif beta == "published":
        beta = 0.09 * gram_diagonal.max()
    beta = float(beta) if beta else 1.0  # beta = 0 only when X = 0, which needs no iteration
    if rho == "published":
        rho = 1.0 / beta
    elif rho is None:
        start_weights, factor = ((problem.original_weights, THRESHOLD_OVER_MEAN_WEIGHT) if initial is None
                                 else (initial, 1.0))
        threshold = factor * float(np.abs(np.asarray(start_weights) * scale[:, None]).mean()) if (
            warm_start and start_weights is not None) else 0.0
        if threshold == 0:
            threshold = 1.0 / np.sqrt(max(float(gram_diagonal.sum()) / gram_diagonal.size, 1e-300))
        rho = 1.0 / (beta * threshold)
    if response_scale is None:
        response_scale = float(np.max(np.abs(problem.Y)))
    return {"rho": float(rho), "beta": beta, "response_scale": max(float(response_scale), 1e-300)}


@dataclass
class _LayerInput:
    """X equilibrated and factored once per layer, on the device (or streamed to it): what every neuron chunk
    shares."""

    X64: SampleBlocks  # X, float64
    X: SampleBlocks    # Xs = D^-1 X in the working precision
    inverse: object   # (Xs Xs^T + beta I)^-1
    scale: object     # D, the row norms of X (ones without equilibration)
    unscale: object   # 1 / D as an (N, 1) column in the working precision
    x_norm: float     # ||Xs||_2

    @classmethod
    def prepare(cls, xp, X, dt, equilibrate: bool, beta: float, samples_per_block: int | None = None) -> _LayerInput:
        """On the device whole, or (samples_per_block given) on the host in blocks moved at each product."""
        if samples_per_block is None:
            X64 = xp.ascontiguousarray(xp.asarray(X))  # Xs and X inherit the order: repair.py gathers rows
            row_norms = xp.sqrt((X64 * X64).sum(axis=1))
            scale = xp.where(row_norms > 0, row_norms, 1.0) if equilibrate else xp.ones(X64.shape[0])
            Xs64 = X64 / scale[:, None]
            gram64 = Xs64 @ Xs64.T
            X64, Xs = SampleBlocks.on_device(xp, X64), SampleBlocks.on_device(xp, Xs64.astype(dt))
        else:
            row_norms = np.linalg.norm(X, axis=1)
            host_scale = np.where(row_norms > 0, row_norms, 1.0) if equilibrate else np.ones(X.shape[0])
            X64 = SampleBlocks.on_host(xp, X, samples_per_block)
            # A repair gathers its support's rows of Xs into the blocks' room.
            max_rows = _streamed_blocks_bytes(X.shape[0], samples_per_block) // (X.shape[1] * dt.itemsize)
            Xs = SampleBlocks.on_host(xp, X, samples_per_block, lambda block: (block / host_scale[:, None]).astype(dt),
                                      max_rows)
            scale = xp.asarray(host_scale)
            gram64 = X64.gram() / xp.outer(scale, scale)
        eigenvalues, eigenvectors = xp.linalg.eigh(gram64)
        eigenvalues = xp.maximum(eigenvalues, 0)
        inverse = ((eigenvectors / (eigenvalues + beta)) @ eigenvectors.T).astype(dt)
        return cls(X64, Xs, inverse, scale, (1.0 / scale).astype(dt)[:, None], float(xp.sqrt(eigenvalues.max())))


def _check_options(problem, options) -> None:
    """Refuse bad options with a ValueError naming them (unknown names raise TypeError, as for any call)."""
    bound = inspect.signature(_solve_admm).bind(problem, **options)
    bound.apply_defaults()
    values = bound.arguments
    array_module(values["device"])
    dtype, relaxation, stopping = values["dtype"], values["relaxation"], values["stopping"]
    check_every, max_iter, restore_rounds = values["check_every"], values["max_iter"], values["restore_rounds"]
    if dtype not in ("float32", "float64", np.float32, np.float64):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    if not 0 < relaxation < 2:
        raise ValueError(f"relaxation must be in (0, 2), got {relaxation}")
    if int(check_every) < 1 or int(max_iter) < 1 or int(restore_rounds) < 0 or not values["gap_patience"] >= 1:
        raise ValueError("check_every, max_iter and gap_patience must be positive integers, restore_rounds >= 0")
    if stopping not in ("residuals", "step"):
        raise ValueError(f"stopping must be 'residuals' or 'step', got {stopping!r}")
    if values["rel_tol"] < 0 or values["abs_tol"] < 0 or values["gap_tol"] < 0:
        raise ValueError("rel_tol, abs_tol and gap_tol must be >= 0")
    limit = values["memory_limit"]
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int | float) or not limit > 0):
        raise ValueError(f"memory_limit must be a positive number of bytes or None, got {limit!r}")
    initial = values["initial"]
    if initial is not None:
        N, _, M = problem.shape
        if np.shape(initial) != (N, M) or not np.all(np.isfinite(initial)):
            raise ValueError(f"initial must be a finite (N, M) = {(N, M)} array, got shape {np.shape(initial)}")


class _WorkingSet:
    """The neurons still iterating and their per-neuron arrays (neurons along axis 0 of M x P arrays,
    axis 1 of N x M arrays, axis 0 of vectors)."""

    ROWS = ("Y", "on_omega", "off_omega", "Z", "Dz")
    COLUMNS = ("U", "W", "Dw", "cost")
    VECTORS = ("rho", "rounds_left", "tol_factor", "lower_bound", "repair_wait")

    def __init__(self, **arrays):
        self.__dict__.update(arrays)

    def keep(self, mask) -> None:
        for name in self.ROWS + ("neurons",) + self.VECTORS:
            setattr(self, name, getattr(self, name)[mask])
        for name in self.COLUMNS:
            setattr(self, name, getattr(self, name)[:, mask])
        if not np.isscalar(self.upper):
            self.upper = self.upper[mask]
        if not np.isscalar(self.eps):
            self.eps = self.eps[mask]


def _project(xp, A, s: _WorkingSet, relu: bool, coupled: bool):
    """Euclidean projection onto C = {Z: ||(Z - Y)_Omega|| <= eps (per row, or in total), Z_Omega^c <= V}."""
    # Float masks (multiplications) rather than boolean selections: several times faster on large layers.
    residual = (A - s.Y) * s.on_omega if relu else A - s.Y
    squares = (residual * residual).sum(axis=1, keepdims=True)
    norms = xp.sqrt(squares.sum(keepdims=True) if coupled else squares)
    outside = norms > s.eps
    shrink = xp.where(outside, s.eps / xp.where(outside, norms, 1), 1)
    inside = s.Y + shrink * residual  # = 0 on Omega^c, where Y = 0 for a relu layer
    return inside + s.off_omega * xp.minimum(A, s.upper) if relu else inside


def _solve_admm(problem: LayerProblem, *, device: str = "cpu", dtype: str = "float64", max_iter: int = 10_000,
                rel_tol: float = 1e-4, abs_tol: float = 1e-7, rho=None, beta=None, adaptive_rho: bool = True,
                relaxation: float = 1.6, check_every: int = 10, warm_start: bool = True, equilibrate: bool = True,
                stopping: str = "residuals", step_tol: float | None = None, restore: bool = True,
                restore_rounds: int = 4, violation_tol: float = 1e-5, gap_tol: float = 5e-3, gap_patience: int = 500,
                repair_misses: bool = True,
                anderson: int = 5,
                response_scale: float | None = None, initial=None, callback=None, memory_limit=None, tf32=False,
                prepared: _LayerInput | None = None) -> LayerResult:
    """The ADMM of the module docstring. Returns a LayerResult for the sparse iterate.

    device "cpu" | "cuda"; dtype "float64" | "float32" (iterations; the checks and measures are float64).
    Stop when every neuron's (or the layer's) primal and dual residuals are below
    abs_tol * max|Y| * sqrt(dim) + rel_tol * (scale of the iterates); `violation_tol` is relative to max|Y|.
    A neuron whose sparse iterate keeps its budget exactly and whose objective is within gap_tol (relative) of
    its certified lower bound is final as well; after gap_patience iterations the tolerance grows in proportion
    (2 gap_tol at 2 gap_patience), so that a neuron whose dual bound converges slowly still ends (each neuron's
    bound stays in info["l1_lower_bound"]); repair_misses=True first repairs a candidate that misses its
    budget on its support (module docstring). `stopping="step"` instead stops when ||U_k - U_{k-1}||_F <
    step_tol (the published rule).
    `initial` (N, M) starts the iteration there instead of at the original weights (reweighting rounds).
    rho, beta and response_scale (max|Y|) are layer-level numbers; solve_admm fills them in (iteration_constants).
    memory_limit (bytes; on CUDA the free device memory by default) and tf32 (CuPy float32 products on tensor
    cores) are solve_admm's: see there. `prepared` is the layer input factored once for several neuron chunks.
    `callback(iteration, info)` is called at every check (for progress bars); returning True stops the solve.
    """
    start = time.perf_counter()
    xp = array_module(device)
    dt = np.dtype(dtype)
    N, P, M = problem.shape
    relu, coupled = problem.activation == "relu", not problem.per_neuron
    y_scale = response_scale

    Y64 = xp.asarray(problem.Y)
    omega64 = xp.asarray(problem.omega)
    upper64 = xp.asarray(problem.upper) if problem.upper is not None else 0.0
    layer = prepared if prepared is not None else _LayerInput.prepare(xp, problem.X, dt, equilibrate, float(beta))
    X64, X, inverse, scale, unscale = layer.X64, layer.X, layer.inverse, layer.scale, layer.unscale
    x_norm = layer.x_norm
    W0s = None
    start_weights = initial if initial is not None else problem.original_weights
    if warm_start and start_weights is not None:
        W0s = xp.asarray(start_weights) * scale[:, None]
    beta, rho0 = float(beta), float(rho)
    U_out = np.zeros((N, M))
    status_out = np.full(M, "max_iter", dtype=object)
    bound_out = np.full(M, np.nan)  # each neuron's certified lower bound on its optimal objective
    if x_norm == 0:  # X = 0: every U has the response 0, so U = 0 is the sparsest one
        return _assemble(problem, U_out, np.full(M, "optimal", dtype=object), 0, start,
                         {"note": "X is zero", "l1_lower_bound": np.zeros(M) if problem.per_neuron else 0.0})
    cost = unscale if problem.l1_weights is None else xp.asarray(problem.l1_weights).astype(dt) * unscale
    cost = xp.broadcast_to(cost, (N, M)).copy()  # the objective sum_ij C_ij |Us_ij| / d_i, per working column

    U = (W0s if W0s is not None else xp.zeros((N, M))).astype(dt)
    # Aim inside the budget by the fit error the tolerance allows (||W^T X - Z|| <~ rel_tol ||y_Omega||), so a
    # converged sparse iterate rarely needs a restoration round (the published rule aims at eps itself).
    margin = 2 * rel_tol * np.linalg.norm(np.where(problem.omega, problem.Y, 0), axis=1)
    if stopping == "step":
        margin = np.zeros_like(margin)
    if coupled:
        eps = max(float(problem.eps) - float(np.linalg.norm(margin)), 0.5 * float(problem.eps))
    else:
        eps = xp.asarray(np.maximum(problem.eps - margin, 0.5 * problem.eps), dtype=dt).reshape(-1, 1)
    s = _WorkingSet(
        neurons=np.arange(M), Y=Y64.astype(dt), on_omega=omega64.astype(dt),
        off_omega=(~omega64).astype(dt),
        original_eps=float(problem.eps) if coupled else xp.asarray(problem.eps),
        upper=upper64.astype(dt) if problem.upper is not None else 0.0, eps=eps,
        U=U, W=U.copy(), Z=None, cost=cost, Dz=xp.zeros((M, P), dtype=dt), Dw=xp.zeros((N, M), dtype=dt),
        rho=xp.full((M,), rho0, dtype=dt), rounds_left=np.full(M, restore_rounds if restore else 0),
        tol_factor=xp.ones(M, dtype=dt), lower_bound=xp.full((M,), np.nan), repair_wait=np.zeros(M, dtype=int))
    s.Z = _project(xp, X.left_times(U.T), s, relu, coupled)
    rho_limits = (rho0 * 1e-3, rho0 * 1e3)
    rho_update_checks, checks = 5, 0
    step_tol = 5e-9 * N * M if step_tol is None else step_tol
    a = relaxation
    accelerator = memory_or_none(xp, anderson, coupled) if stopping == "residuals" else None
    iteration, history, stopped_by_callback = 0, [], False
    products = None  # (X Z^T, X Dz^T) of the current state, when a check has just computed them

    per_budget = partial(feasibility.per_budget, xp, coupled=coupled)

    def finalize(mask, status, weights=None):
        idx = s.neurons[to_host(mask).astype(bool)]
        U_out[:, idx] = to_host(s.W[:, mask] * unscale).astype(np.float64) if weights is None else weights
        status_out[idx] = status
        bound_out[idx] = to_host(s.lower_bound[mask])

    l1_weights = None if problem.l1_weights is None else xp.asarray(problem.l1_weights)
    repaired_neurons = []

    def repair(positions, responses, gap_allowed):
        """{position: repaired weights (N,), float64} for the working-set positions whose repair on their support
        keeps the budget and stays within gap_allowed of their certified bound (repair.py; `responses` are
        their sparse iterates' responses, measured in float64); the others wait."""
        repaired = {}
        for position, response in zip(positions, responses, strict=True):
            if X.max_rows < N and int(xp.count_nonzero(s.W[:, position])) > X.max_rows:  # X streamed: no room
                s.repair_wait[position] = REPAIR_WAIT_CHECKS
                continue
            neuron = int(s.neurons[position])
            upper = upper64 if np.isscalar(upper64) else upper64[neuron]
            weights = repair_on_support(xp, X, response, Y64[neuron], omega64[neuron], upper,
                                        (s.W[:, position] * unscale[:, 0]).astype(np.float64),
                                        (1 - 1e-4) * float(problem.eps[neuron]), 0.1 * violation_tol * y_scale, scale)
            objective = None if weights is None else float(
                (xp.abs(weights) if l1_weights is None else l1_weights[:, neuron] * xp.abs(weights)).sum())
            if objective is not None and objective - float(s.lower_bound[position]) <= gap_allowed * objective:
                repaired[position] = to_host(weights)
                repaired_neurons.append(neuron)
            else:
                s.repair_wait[position] = REPAIR_WAIT_CHECKS
        return repaired

    while iteration < max_iter and s.neurons.size:
        iteration += 1
        check = stopping == "residuals" and (iteration % check_every == 0 or iteration == max_iter)
        if check and products is None:
            products = X.times_transposed(s.Z, s.Dz)
        if products is not None:
            XZ, XD = products
            rhs = XZ - XD + beta * (s.W - s.Dw)
        else:
            rhs = X.times_transposed(s.Z - s.Dz)[0] + beta * (s.W - s.Dw)
        products = None
        U_previous = s.U
        U = inverse @ rhs
        XU = X.left_times(U.T)
        Z_relaxed = XU if a == 1 else a * XU + (1 - a) * s.Z
        W_relaxed = U if a == 1 else a * U + (1 - a) * s.W
        zeta_z, zeta_w = Z_relaxed + s.Dz, W_relaxed + s.Dw  # the fixed-point variable, see anderson.py
        if accelerator is not None:  # checks take the plain step, so their residual formulas stay exact
            zeta_z, zeta_w = accelerator.step(zeta_z, zeta_w, accelerate=not check)
        Z_new = _project(xp, zeta_z, s, relu, coupled)
        threshold = s.cost / (s.rho * beta)[None, :]
        W_new = zeta_w - xp.clip(zeta_w, -threshold, threshold)
        Dz_new = zeta_z - Z_new
        Dw_new = zeta_w - W_new
        W_old, Dz_old, Dw_old = s.W, s.Dz, s.Dw
        s.U, s.Z, s.W, s.Dz, s.Dw = U, Z_new, W_new, Dz_new, Dw_new

        if stopping == "step":
            if float(xp.linalg.norm((U - U_previous) / scale[:, None])) < step_tol:
                finalize(xp.ones(s.neurons.size, dtype=bool), "optimal")
                s.keep(np.zeros(s.neurons.size, dtype=bool))
                break
            continue
        if not check:
            continue

        # Residuals: primal r = (U^T X - Z, sqrt(beta)(U - W)); dual s = rho (X dZ^T + beta dW). X Dz_new^T is
        # a product of its own (not an update from G U): the dual bound needs it accurate. The next iteration's
        # right-hand side reuses both products.
        XZ_new, XD_new = products = X.times_transposed(Z_new, Dz_new)
        rho = s.rho
        primal = xp.sqrt(per_budget(((XU - Z_new) ** 2).sum(axis=1) + beta * ((U - W_new) ** 2).sum(axis=0)))
        dual = xp.sqrt(per_budget(rho**2 * ((XZ_new - XZ + beta * (W_new - W_old)) ** 2).sum(axis=0)))
        iterate_scale = xp.sqrt(per_budget(xp.maximum(
            (XU**2).sum(axis=1) + beta * (U**2).sum(axis=0), (Z_new**2).sum(axis=1) + beta * (W_new**2).sum(axis=0))))
        # At the optimum X y_z^T + beta y_w = 0 (U carries no cost), so the dual scale is that of either term.
        dual_scale = xp.sqrt(per_budget(rho**2 * xp.maximum((XD_new**2).sum(axis=0),
                                                            beta**2 * (Dw_new**2).sum(axis=0))))
        # Tightened tolerances (restoration rounds) stop at what the working precision can resolve.
        relative = xp.maximum(s.tol_factor * rel_tol, 50 * float(np.finfo(dt).eps))
        primal_tol = s.tol_factor * abs_tol * y_scale * np.sqrt(P + N) + relative * iterate_scale
        dual_tol = s.tol_factor * abs_tol * y_scale * np.sqrt(N) + relative * dual_scale
        converged = (primal <= primal_tol) & (dual <= dual_tol)
        s.lower_bound = dual_bound(xp, s, Dz_new, XD_new, s.original_eps if coupled else s.original_eps[s.neurons],
                                   upper64 if np.isscalar(upper64) else upper64[s.neurons], relu, coupled)
        objective = per_budget((s.cost * xp.abs(W_new)).sum(axis=0).astype(np.float64))
        gap_allowed = gap_tol * max(1.0, iteration / gap_patience)
        certified = (objective - s.lower_bound <= gap_allowed * objective) & (objective > 0)
        infeasible = certify_infeasible(xp, s, relu, coupled, Dz_new - Dz_old, XD_new - XD, beta,
                                         Dw_new - Dw_old, x_norm)
        info = {"active": int(s.neurons.size), "primal": float(primal.max()), "dual": float(dual.max()),
                "converged": float(converged.mean())}
        history.append((iteration, info["active"], info["primal"], info["dual"], float(s.rho.min()) / rho0,
                        float(s.rho.max()) / rho0))
        if callback is not None and callback(iteration, info):
            stopped_by_callback = True
            break
        if bool(infeasible.any()):
            finalize(infeasible, "infeasible")
            converged = converged & ~infeasible
        done = infeasible.copy()
        if bool((converged | certified).any()):
            done |= accept_or_tighten(xp, s, converged, X64, Y64, omega64, upper64, unscale, relu, coupled,
                                       y_scale, violation_tol, finalize, restore_rounds, certified,
                                       None if coupled or not repair_misses else partial(repair,
                                                                                         gap_allowed=gap_allowed))
        s.repair_wait -= 1
        if accelerator is not None:
            accelerator.clear(converged)
        if bool(done.any()):
            s.keep(~done)
            products = (XZ_new[:, ~done], XD_new[:, ~done])
            if accelerator is not None:
                accelerator.keep(~done)
        checks += 1
        if adaptive_rho and s.neurons.size and checks % rho_update_checks == 0:
            keep = ~done
            tiny = float(np.finfo(dt).tiny)
            ratio = xp.sqrt((primal[keep] / xp.maximum(iterate_scale[keep], tiny))
                            / xp.maximum(dual[keep] / xp.maximum(dual_scale[keep], tiny), tiny))
            ratio = xp.where((ratio > 5) | (ratio < 0.2), xp.clip(ratio, 0.2, 5.0), 1.0)
            ratio = (xp.clip(s.rho * ratio, rho_limits[0], rho_limits[1]) / s.rho).astype(dt)
            s.rho = s.rho * ratio
            s.Dz = s.Dz / ratio[:, None]
            products = (products[0], products[1] / ratio[None, :])
            s.Dw = s.Dw / ratio[None, :]
            if accelerator is not None:
                accelerator.rescale(ratio != 1, (s.Z + s.Dz, s.W + s.Dw))

    if s.neurons.size:  # unconverged (max_iter or callback) or stopped on the step rule
        finalize(xp.ones(s.neurons.size, dtype=bool), "max_iter")
    info = {"beta": beta, "rho_initial": rho0, "history": history, "device": device, "dtype": dt.name,
            "stopped_by_callback": stopped_by_callback, "repaired": len(repaired_neurons)}
    info["l1_lower_bound"] = bound_out if not coupled else float(bound_out[0])
    result = _assemble(problem, U_out, status_out, iteration, start, info)
    if stopping == "step" and result.status == "optimal" and not within_budget(problem, result, 1e-9, violation_tol):
        result.status = "inaccurate"
        result.message += "; the returned iterate misses the budget or the Omega^c bound"
    return result


def _assemble(problem, U, statuses, iterations, start, info) -> LayerResult:
    counts = {status: int(np.sum(statuses == status)) for status in SEVERITY}
    overall, message = summarize_statuses(counts, problem.per_neuron)
    return make_result(problem, U, status=overall, message=message, iterations=iterations,
                       seconds=time.perf_counter() - start, backend="admm", info=dict(info, neuron_status=counts))
