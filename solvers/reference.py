"""The reference backend: the layer program written in CVXPY and solved by Clarabel (interior point) or SCS.

Per-neuron budgets give M independent second-order cone programs in u_m (one CVXPY problem each); a scalar
budget couples the neurons, so it is one program in U (fine for the small layers a reference is for), as does
the rows' group norm (structure="rows") with either budget form.
"""

from __future__ import annotations

import time
import warnings

import cvxpy as cp
import numpy as np

from . import rowgroups
from .problem import LayerProblem
from .result import LayerResult, make_result, within_budget

SOLVERS = ("CLARABEL", "SCS")

#: Tolerances for reference-quality solutions.
HIGH_ACCURACY = {
    "CLARABEL": dict(tol_gap_abs=1e-9, tol_gap_rel=1e-9, tol_feas=1e-9, tol_ktratio=1e-7, max_iter=500),
    "SCS": dict(eps_abs=1e-7, eps_rel=1e-7, max_iters=200_000),
}

_STATUS = {cp.OPTIMAL: "optimal", cp.OPTIMAL_INACCURATE: "inaccurate", cp.INFEASIBLE: "infeasible",
           cp.INFEASIBLE_INACCURATE: "infeasible", cp.USER_LIMIT: "max_iter"}


def _neuron_constraints(problem: LayerProblem, u, m: int):
    """Residual on Omega (a CVXPY vector) and the Omega^c inequality of neuron m."""
    X, y, omega = problem.X, problem.Y[m], problem.omega[m]
    residual = X[:, omega].T @ u - y[omega]
    constraints = []
    if problem.activation == "relu" and not omega.all():
        bound = problem.upper[m, ~omega] if problem.upper is not None else np.zeros(int((~omega).sum()))
        constraints.append(X[:, ~omega].T @ u <= bound)
    return residual, constraints


def solve_reference(problem: LayerProblem, *, solver: str = "CLARABEL", zero_tol: float = 1e-9,
                    accuracy: str = "high", verbose: bool = False, **solver_options) -> LayerResult:
    """Solve with CVXPY. Entries with |d_i u_i| <= zero_tol * max|D U| (d_i the norm of X's row i: the
    weights in the equilibrated units below) are set to exact zeros before measuring.

    accuracy="high" uses HIGH_ACCURACY's tolerances (overridable by solver_options); "default" uses the
    solver's own defaults. The solvers' tolerances are absolute, so the program is solved in units of max|Y|
    (Y, eps and V divided by it give the solution U divided by it: the constraints are linear in (U, Y, eps, V)
    and the objective is homogeneous), which makes the result the same whatever units the data are in.
    """
    solver = solver.upper()
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    if accuracy not in ("high", "default"):
        raise ValueError(f"accuracy must be 'high' or 'default', got {accuracy!r}")
    options = dict(HIGH_ACCURACY[solver]) if accuracy == "high" else {}
    options.update(solver_options)
    start = time.perf_counter()
    unit = problem.response_scale() or 1.0
    rows = _row_scale(problem)
    program, live = _in_units(problem, unit, rows)
    solved, statuses, iterations = _solve_programs(program, solver, options, verbose)
    worst = _worst_status(statuses)
    U = np.zeros((problem.shape[0], problem.shape[2]))
    if worst != "infeasible":  # thresholded relative to the largest scaled weight
        U[live] = unit * _thresholded(program, solved, zero_tol) / rows[live, None]
    result = make_result(problem, U, status=worst, message=f"CVXPY {solver}: {sorted(map(str, set(statuses)))}",
                         iterations=iterations, seconds=time.perf_counter() - start, backend="cvxpy",
                         info={"solver": solver, "statuses": statuses})
    if result.status == "optimal" and not within_budget(problem, result, fit_rtol=1e-6, violation_tol=1e-6):
        result.status = "inaccurate"
        result.message += "; the thresholded solution misses the budget or the bound by more than 1e-6"
    return result


#: The reference aims inside the budget by this fraction of eps, ten times Clarabel's fit error on unit rows (up
#: to 3.3e-9 of eps measured), so that its answers keep the budget to 1e-9; the optimum moves by about as much.
BUDGET_MARGIN = 1e-8


def _row_scale(problem: LayerProblem) -> np.ndarray:
    """(N,) the norms of X's rows (each group's root mean square for the rows' objective; 1 for a zero row)."""
    return rowgroups.equilibration_scale(np.linalg.norm(problem.X, axis=1), problem.group_size if problem.rows else 1)


def _in_units(problem: LayerProblem, unit: float, rows: np.ndarray) -> tuple[LayerProblem, np.ndarray]:
    """(program, live): the program with Y, eps and V divided by `unit` (eps also less BUDGET_MARGIN) and the
    rows of X by `rows` (D), whose solution is D U / unit (the objective's weights become c / D), on the `live`
    rows of X only (for l1: a zero row's weight is 0 at the optimum). Rows of norms 1e-8 beside a bias row of
    ones (vanishing signals) made Clarabel fail; unit-norm rows are what its own scaling handles."""
    def divided(value):
        return None if value is None else value / unit

    eps = divided(problem.eps) * (1 - BUDGET_MARGIN)
    original = None if problem.original_weights is None else problem.original_weights * rows[:, None] / unit
    if problem.rows:
        firsts = rowgroups.firsts(np, rows, problem.group_size)
        costs = (1.0 if problem.group_weights is None else problem.group_weights) / firsts
        return LayerProblem(problem.X / rows[:, None], problem.Y / unit, eps, problem.activation,
                            divided(problem.upper), original, None, problem.structure, _normalized(costs),
                            problem.group_size), np.ones(rows.size, dtype=bool)
    live = np.any(problem.X != 0, axis=1)
    live = live if live.any() else ~live
    costs = (1.0 if problem.l1_weights is None else problem.l1_weights) / rows[:, None]
    costs = np.broadcast_to(costs, (rows.size, problem.Y.shape[0]))[live]
    return LayerProblem(problem.X[live] / rows[live, None], problem.Y / unit, eps,
                        problem.activation, divided(problem.upper), None if original is None else original[live],
                        _normalized(costs), problem.structure), live


def _normalized(costs: np.ndarray) -> np.ndarray:
    """The objective's weights divided by their median positive value (the minimizer is the same), so the
    objective is of order one whatever the scale of X."""
    positive = costs[costs > 0]
    return costs / np.median(positive) if positive.size else costs


def _thresholded(problem: LayerProblem, U: np.ndarray, zero_tol: float) -> np.ndarray:
    """U with exact zeros where |U_ij| (rows: the group's ||U_g,:||) <= zero_tol times its largest."""
    if problem.rows:
        norms = rowgroups.norms(np, U, problem.group_size)
        size = rowgroups.expand(np, norms, problem.group_size, U.shape[0])[:, None]
    else:
        size = np.abs(U)
    return np.where(size <= zero_tol * max(size.max(), 1e-300), 0.0, U)


def _solve_programs(problem: LayerProblem, solver: str, options: dict, verbose: bool):
    """(U, CVXPY statuses, iterations): one program per neuron (per-neuron budgets, l1) or one for the layer."""
    N, _, M = problem.shape
    U = np.zeros((N, M))
    statuses, iterations = [], 0
    if problem.per_neuron and not problem.rows:
        for m in range(M):
            u = cp.Variable(N)
            residual, constraints = _neuron_constraints(problem, u, m)
            if residual.size:
                constraints.append(cp.norm(residual, 2) <= problem.eps[m])
            cost = cp.norm1(u) if problem.l1_weights is None else problem.l1_weights[:, m] @ cp.abs(u)
            program = cp.Problem(cp.Minimize(cost), constraints)
            iterations += _solve(program, solver, options, verbose)
            statuses.append(program.status)
            U[:, m] = u.value if u.value is not None else np.nan
        return U, statuses, iterations
    variable = cp.Variable((N, M))
    residuals, constraints = [], []
    for m in range(M):
        residual, neuron_constraints = _neuron_constraints(problem, variable[:, m], m)
        residuals.append(residual)
        constraints += neuron_constraints
    if problem.per_neuron:
        constraints += [cp.norm(residual, 2) <= eps for residual, eps in zip(residuals, problem.eps, strict=True)
                        if residual.size]
    else:
        constraints.append(cp.norm(cp.hstack(residuals), 2) <= problem.eps)
    program = cp.Problem(cp.Minimize(_layer_objective(problem, variable)), constraints)
    iterations += _solve(program, solver, options, verbose)
    statuses.append(program.status)
    if variable.value is not None:
        U = np.array(variable.value)
    else:
        U[:] = np.nan
    return U, statuses, iterations


def _layer_objective(problem: LayerProblem, variable):
    """sum C |U| (l1), or sum_g c_g ||U_g,:||_F (rows), as a CVXPY expression."""
    if problem.rows:
        norms = cp.hstack([cp.norm(variable[rows, :], "fro")
                           for rows in rowgroups.slices(problem.shape[0], problem.group_size)])
        return cp.sum(norms) if problem.group_weights is None else problem.group_weights @ norms
    weights = 1.0 if problem.l1_weights is None else problem.l1_weights
    return cp.sum(cp.multiply(weights, cp.abs(variable)))


def _solve(program: cp.Problem, solver: str, options: dict, verbose: bool) -> int:
    try:
        with warnings.catch_warnings():  # an inaccurate solve is reported through the status instead
            warnings.filterwarnings("ignore", message="Solution may be inaccurate")
            program.solve(solver=solver, verbose=verbose, **options)
    except cp.SolverError:
        return 0
    stats = program.solver_stats
    return int(stats.num_iters or 0) if stats is not None else 0


def _worst_status(statuses) -> str:
    mapped = [_STATUS.get(s, "inaccurate") for s in statuses]
    for status in ("infeasible", "max_iter", "inaccurate"):
        if status in mapped:
            return status
    return "optimal"
