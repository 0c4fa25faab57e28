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
comes from one eigendecomposition of the Gram matrix G = X X^T, which both NumPy and CuPy provide.

Stopping uses primal and dual residuals with absolute and relative tolerances (Boyd et al. 2011, sec. 3.3),
checked every `check_every` iterations; one check costs one extra X-product because X Dz^T follows from
G U. At a check the scaled-dual increment is also tested as a certificate of primal infeasibility.

The returned U is the sparse iterate W, measured exactly in float64. If it misses the budget (its response
error sqrt(fit^2 + ||(U^T X - V)_+ on Omega^c||^2) exceeds eps) or the Omega^c bound by more than the
tolerance, the internal budget and bound are tightened by the measured excess and the iteration continues
from its state (`restore_rounds` times at most): what the user gets keeps Proposition 1's promise.
"""

from __future__ import annotations

import time

import numpy as np

from .problem import LayerProblem
from .result import LayerResult, make_result

#: Options that make this ADMM the published Net-Trim solver (Aghasi et al., SIAM J. Math. Data Sci. 2020):
#: fixed rho = 1 on data scaled by c0 = 0.3 sqrt(max X X^T), no over-relaxation, no warm start, stop when
#: ||dU||_F < 5e-9 N M, and return the soft-thresholded iterate as it is.
PUBLISHED_OPTIONS = dict(
    rho="published", beta="published", adaptive_rho=False, relaxation=1.0, warm_start=False,
    stopping="step", restore=False,
)


def array_module(device: str):
    """NumPy for device="cpu", CuPy for device="cuda" (or "cuda:K")."""
    if device == "cpu":
        return np
    if isinstance(device, str) and device.split(":")[0] in ("cuda", "gpu"):
        try:
            import cupy
        except ImportError as error:
            raise ImportError("device='cuda' needs CuPy: pip install 'nettrim[gpu]' (needs an NVIDIA GPU)") from error
        if ":" in device:
            cupy.cuda.Device(int(device.split(":")[1])).use()
        return cupy
    raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")


def _to_host(array) -> np.ndarray:
    return array.get() if hasattr(array, "get") else np.asarray(array)


class _Projection:
    """Euclidean projection onto C = {Z: ||(Z - Y)_Omega|| <= eps (per row or in total), Z_Omega^c <= V}."""

    def __init__(self, xp, Y, omega, eps, upper, relu: bool, per_neuron: bool):
        self.xp, self.Y, self.omega, self.relu, self.per_neuron = xp, Y, omega, relu, per_neuron
        self.eps = eps  # (M, 1) array per neuron, else a float
        self.upper = upper  # (M, P) array or the scalar 0

    def residual_norms(self, residual):
        squares = residual * residual
        if self.per_neuron:
            return self.xp.sqrt(squares.sum(axis=1, keepdims=True))
        return self.xp.sqrt(squares.sum())

    def __call__(self, A):
        xp = self.xp
        residual = xp.where(self.omega, A - self.Y, 0) if self.relu else A - self.Y
        norms = self.residual_norms(residual)
        shrink = xp.where(norms > self.eps, self.eps / xp.maximum(norms, 1e-300), 1.0)
        inside = self.Y + shrink * residual
        return xp.where(self.omega, inside, xp.minimum(A, self.upper)) if self.relu else inside

    def support_value(self, direction):
        """sigma_C(direction) per neuron (or in total); +inf-like where direction < 0 on Omega^c."""
        xp = self.xp
        on_omega = xp.where(self.omega, direction, 0)
        value = (on_omega * self.Y).sum(axis=1, keepdims=True) + self.eps * xp.sqrt(
            (on_omega * on_omega).sum(axis=1, keepdims=True))
        if self.relu:
            off_omega = xp.where(self.omega, 0, direction)
            value = value + (off_omega * self.upper).sum(axis=1, keepdims=True)
        return value if self.per_neuron else value.sum(keepdims=True)


def _initial_penalties(xp, gram_diag_max, gram_trace, N, W0, rho, beta, dtype):
    if beta == "published":
        beta = 0.09 * gram_diag_max
    elif beta is None:
        beta = 0.09 * gram_diag_max
    if rho == "published":
        rho = 1.0 / beta
    elif rho is None:
        # Threshold 1/(rho beta) at the typical magnitude of a trained weight (or of X's scale).
        typical = float(xp.mean(xp.abs(W0))) if W0 is not None and float(xp.abs(W0).max()) > 0 else None
        if typical is None:
            typical = 1.0 / np.sqrt(max(gram_trace / N, 1e-300))
        rho = 1.0 / (beta * typical)
    return float(beta), float(rho)


def solve_admm(problem: LayerProblem, *, device: str = "cpu", dtype: str = "float64", max_iter: int = 10_000,
               rel_tol: float = 1e-4, abs_tol: float = 1e-7, rho=None, beta=None, adaptive_rho: bool = True,
               relaxation: float = 1.6, check_every: int = 10, warm_start: bool = True,
               stopping: str = "residuals", step_tol: float | None = None, restore: bool = True,
               restore_rounds: int = 4, violation_tol: float = 1e-5, callback=None) -> LayerResult:
    """Solve `problem` by ADMM (see the module docstring). Returns a LayerResult for the sparse iterate.

    device "cpu" | "cuda"; dtype "float64" | "float32" (the measures of the returned U are float64);
    tolerances: stop when every neuron's (or the layer's) primal and dual residuals are below
    abs_tol * max|Y| * sqrt(dim) + rel_tol * (scale of the iterates). `violation_tol` is relative to max|Y|.
    `callback(iteration, info)` is called at every residual check (for progress bars); returning True stops.
    """
    _check_options(dtype, relaxation, check_every, stopping, max_iter, rel_tol, abs_tol)
    start = time.perf_counter()
    xp = array_module(device)
    dt = np.dtype(dtype)
    N, P, M = problem.shape
    relu, per_neuron = problem.activation == "relu", problem.per_neuron
    y_scale = max(float(np.max(np.abs(problem.Y))), 1e-300)

    X = xp.asarray(problem.X, dtype=dt)
    Y = xp.asarray(problem.Y, dtype=dt)
    omega = xp.asarray(problem.omega)
    gram64 = xp.asarray(problem.X) @ xp.asarray(problem.X).T
    eigenvalues, eigenvectors = xp.linalg.eigh(gram64)
    eigenvalues = xp.maximum(eigenvalues, 0)
    x_norm = float(np.sqrt(float(eigenvalues.max())))  # ||X||_2
    W0 = None
    if warm_start and problem.original_weights is not None:
        W0 = xp.asarray(problem.original_weights, dtype=dt)
    beta, rho0 = _initial_penalties(xp, float(xp.diag(gram64).max()), float(xp.trace(gram64)), N, W0, rho, beta, dt)
    if beta <= 0:
        # X is all zeros: U^T X = 0 for every U, so the sparsest U is 0 (feasible iff 0 is).
        return _finish(problem, np.zeros((N, M)), "all-zero X: the only sensible weights are 0", 0, start, xp)
    inverse = ((eigenvectors / (eigenvalues + beta)) @ eigenvectors.T).astype(dt)
    gram = gram64.astype(dt)
    del gram64, eigenvectors

    eps_internal = xp.asarray(problem.eps, dtype=dt).reshape(-1, 1) if per_neuron else float(problem.eps)
    upper = xp.asarray(problem.upper, dtype=dt) if problem.upper is not None else 0.0
    project = _Projection(xp, Y, omega, eps_internal, upper, relu, per_neuron)
    # rho per neuron when the neurons are independent programs; one shared value when eps couples them.
    rho = xp.full((M,), rho0, dtype=dt)

    def per_budget(row_values):  # per-neuron sums, or the layer total broadcast to every neuron
        return row_values if per_neuron else xp.full_like(row_values, row_values.sum())

    U = W0.copy() if W0 is not None else xp.zeros((N, M), dtype=dt)
    W = U.copy()
    Z = project(U.T @ X)
    Dz = xp.zeros((M, P), dtype=dt)
    Dw = xp.zeros((N, M), dtype=dt)
    a = relaxation
    if step_tol is None:
        step_tol = 5e-9 * N * M
    tolerances = [rel_tol, abs_tol]
    rounds_left = restore_rounds if restore else 0
    status, message = "max_iter", f"stopped after max_iter={max_iter} iterations without converging"
    iteration = 0
    history = []
    while iteration < max_iter:
        iteration += 1
        check = stopping == "residuals" and (iteration % check_every == 0 or iteration == max_iter)
        if check:
            XZ, XD = X @ Z.T, X @ Dz.T
            rhs = XZ - XD + beta * (W - Dw)
        else:
            rhs = X @ (Z - Dz).T + beta * (W - Dw)
        U_previous = U
        U = inverse @ rhs
        XU = U.T @ X
        Z_relaxed = XU if a == 1 else a * XU + (1 - a) * Z
        W_relaxed = U if a == 1 else a * U + (1 - a) * W
        Z_new = project(Z_relaxed + Dz)
        threshold = (1.0 / (rho * beta))[None, :]
        W_new = W_relaxed + Dw
        W_new = W_new - xp.clip(W_new, -threshold, threshold)
        Dz_new = Dz + Z_relaxed - Z_new
        Dw_new = Dw + W_relaxed - W_new

        if stopping == "step":
            Z, W, Dz, Dw = Z_new, W_new, Dz_new, Dw_new
            if float(xp.linalg.norm(U - U_previous)) < step_tol:
                status, message = "optimal", f"||dU|| below {step_tol:.3g}"
                break
            continue
        if not check:
            Z, W, Dz, Dw = Z_new, W_new, Dz_new, Dw_new
            continue

        # Residuals per neuron (or per layer): primal r = (U^T X - Z, sqrt(beta)(U - W)),
        # dual s = rho (X dZ^T + beta dW); X Dz_new^T = X Dz^T + a G U + (1 - a) X Z^T - X Z_new^T.
        XZ_new = X @ Z_new.T
        XD_new = XD + a * (gram @ U) + (1 - a) * XZ - XZ_new
        primal = per_budget(((XU - Z_new) ** 2).sum(axis=1) + beta * ((U - W_new) ** 2).sum(axis=0))
        dual = per_budget(rho**2 * ((XZ_new - XZ + beta * (W_new - W)) ** 2).sum(axis=0))
        iterate_scale = per_budget(xp.maximum((XU**2).sum(axis=1) + beta * (U**2).sum(axis=0),
                                              (Z_new**2).sum(axis=1) + beta * (W_new**2).sum(axis=0)))
        # At the optimum X y_z^T + beta y_w = 0 (U has no cost), so the dual scale is that of either term.
        dual_scale = per_budget(rho**2 * xp.maximum((XD_new**2).sum(axis=0), beta**2 * (Dw_new**2).sum(axis=0)))
        primal_tol = tolerances[1] * y_scale * np.sqrt(P + N) + tolerances[0] * xp.sqrt(iterate_scale)
        dual_tol = tolerances[1] * y_scale * np.sqrt(N) + tolerances[0] * xp.sqrt(dual_scale)
        primal, dual = xp.sqrt(primal), xp.sqrt(dual)
        converged = bool(xp.all((primal <= primal_tol) & (dual <= dual_tol)))
        infeasible = _infeasibility_certificate(xp, project, rho, Dz_new - Dz, XD_new - XD, beta, Dw_new - Dw,
                                                x_norm)
        Z, W, Dz, Dw = Z_new, W_new, Dz_new, Dw_new
        info = {"primal": float(primal.max()), "dual": float(dual.max()), "rho": float(rho.mean())}
        history.append((iteration, info["primal"], info["dual"]))
        if callback is not None and callback(iteration, info):
            message = f"stopped by the callback at iteration {iteration}"
            break
        if infeasible is not None:
            status = "infeasible"
            message = f"the budget cannot be met: a certificate of infeasibility for {infeasible}"
            break
        if converged:
            candidate = make_result(problem, _to_host(W).astype(np.float64), status="optimal", message="",
                                    iterations=iteration, seconds=0.0, backend="admm")
            excess = _budget_excess(problem, candidate, violation_tol)
            if excess is None:
                status, message = "optimal", "primal and dual residuals below tolerance; within budget"
                break
            if rounds_left == 0:
                status, message = "inaccurate", (
                    "converged, but the sparse iterate misses the budget or the Omega^c bound after "
                    f"{restore_rounds} restoration rounds")
                break
            rounds_left -= 1
            eps_internal, upper = _tightened(xp, dt, problem, project, excess, eps_internal, upper, W, X)
            project.eps, project.upper = eps_internal, upper
            tolerances = [t * 0.1 for t in tolerances]
            continue
        if adaptive_rho:
            ratio = xp.sqrt((primal / xp.sqrt(xp.maximum(iterate_scale, 1e-300)))
                            / xp.maximum(dual / xp.sqrt(xp.maximum(dual_scale, 1e-300)), 1e-300))

            ratio = xp.where((ratio > 5) | (ratio < 0.2), xp.clip(ratio, 1e-3, 1e3), 1.0).astype(dt)
            rho = rho * ratio
            Dz = Dz / ratio[:, None]
            Dw = Dw / ratio[None, :]
    result = _finish(problem, _to_host(W).astype(np.float64), message, iteration, start, xp, status=status)
    result.info.update(rho=float(rho.mean()), beta=beta, history=history, device=device, dtype=dt.name,
                       restore_rounds_used=(restore_rounds - rounds_left) if restore else 0)
    return result


def _finish(problem, U, message, iterations, start, xp, status="optimal") -> LayerResult:
    return make_result(problem, U, status=status, message=message, iterations=iterations,
                       seconds=time.perf_counter() - start, backend="admm")


def _check_options(dtype, relaxation, check_every, stopping, max_iter, rel_tol, abs_tol):
    if np.dtype(dtype) not in (np.float32, np.float64):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    if not 0 < relaxation < 2:
        raise ValueError(f"relaxation must be in (0, 2), got {relaxation}")
    if int(check_every) < 1 or int(max_iter) < 1:
        raise ValueError("check_every and max_iter must be positive integers")
    if stopping not in ("residuals", "step"):
        raise ValueError(f"stopping must be 'residuals' or 'step', got {stopping!r}")
    if rel_tol < 0 or abs_tol < 0:
        raise ValueError("rel_tol and abs_tol must be >= 0")


def _infeasibility_certificate(xp, project, rho, dDz, XdDz, beta, dDw, x_norm, tol=1e-6):
    """Which neurons (or "the layer") have a scaled-dual increment certifying C and {U^T X} do not meet.

    The increment y = rho dDz certifies infeasibility when ||X y^T|| <= tol ||X||_2 ||y|| (y is orthogonal to
    every response U^T X) while sigma_C(y) < 0, with y >= 0 on Omega^c (OSQP's test, Banjac et al. 2019).
    """
    y = rho[:, None] * dDz
    size = xp.sqrt((y * y).sum(axis=1, keepdims=True))
    if not project.per_neuron:
        size = xp.sqrt((size**2).sum(keepdims=True))
    if float(size.max()) == 0:
        return None
    aty = xp.sqrt(((rho[None, :] * (XdDz + beta * dDw)) ** 2).sum(axis=0)).reshape(-1, 1)
    if not project.per_neuron:
        aty = xp.sqrt((aty**2).sum(keepdims=True))
    negative_off_omega = xp.where(project.omega, 0, xp.minimum(y, 0)) if project.relu else xp.zeros_like(y)
    negative = xp.sqrt((negative_off_omega**2).sum(axis=1, keepdims=True))
    if not project.per_neuron:
        negative = xp.sqrt((negative**2).sum(keepdims=True))
    y_norm = float(xp.sqrt((project.Y**2).sum()))
    certified = ((aty <= tol * size * x_norm)
                 & (negative <= tol * size)
                 & (project.support_value(y) < -tol * size * max(y_norm, 1e-300))
                 & (size > 0))
    hits = np.flatnonzero(_to_host(certified).ravel())
    if hits.size == 0:
        return None
    return f"neurons {hits.tolist()[:10]}" if project.per_neuron else "the layer"


def _budget_excess(problem: LayerProblem, candidate: LayerResult, violation_tol: float):
    """None if the candidate keeps its budget exactly (and the bound to violation_tol), else the excesses."""
    scale = max(float(np.max(np.abs(problem.Y))), 1e-300)
    error = np.asarray(candidate.fit if problem.activation == "linear" else _error_with_hinge(problem, candidate))
    over = np.maximum(error - np.asarray(problem.eps), 0.0)
    violating = candidate.max_violation > violation_tol * scale
    if not np.any(over > 1e-12 * scale) and not violating:
        return None
    return {"over": over, "violating": violating}


def _error_with_hinge(problem: LayerProblem, candidate: LayerResult):
    """sqrt(fit^2 + ||(U^T X - V)_+ on Omega^c||^2): <= eps gives Proposition 1 when V <= 0."""
    response = candidate.U.T @ problem.X
    hinge = np.where(problem.omega, 0.0, np.maximum(response - problem.upper_bound(), 0.0))
    axis = 1 if problem.per_neuron else None
    return np.sqrt(np.asarray(candidate.fit) ** 2 + (hinge**2).sum(axis=axis))


def _tightened(xp, dt, problem, project, excess, eps_internal, upper, W, X):
    """Shrink the internal budget by twice the measured excess, and V by twice each violation."""
    over = excess["over"]
    if problem.per_neuron:
        eps_internal = xp.maximum(eps_internal - 2 * xp.asarray(over, dtype=dt).reshape(-1, 1), 0)
    else:
        eps_internal = max(eps_internal - 2 * float(over), 0.0)
    if problem.activation == "relu":
        violation = xp.where(project.omega, 0, xp.maximum(W.T @ X - upper, 0))
        if float(violation.max()) > 0:
            upper = upper - 2 * violation
    return eps_internal, upper
