"""Nearly dead neurons: ReLU neurons whose response is positive on a handful of samples, solved by cutting planes.

Such a neuron's program fits its response on |Omega_m| samples (a few of the P) within eps_m, and keeps
u^T x_j <= v_j on the P - |Omega_m| others. The ADMM solves it badly: the fit and the half-spaces pull the
iterate at scales far apart, and residual balancing cycles rho (LeNet-300-100 layer 1, P = 55,000, float32:
one neuron with |Omega| = 1 and ||y|| = 0.003 ran to max_iter = 10,000 at 3 times its budget; at P = 10,000 its
like took 1,100 iterations where the layer's other neurons end in 100 to 300). Its optimum is fixed by few of
the half-spaces, so it is solved by constraint generation over the interior-point reference (reference.py):

    S_0 = the FIRST samples of Omega^c nearest to activating under the original weights (largest w0^T x_j - v_j)
    u_k = argmin ||u||_1  s.t.  ||(u^T X - y)_Omega|| <= eps,  u^T x_j <= v_j for j in S_k   (CVXPY + Clarabel)
    stop when u_k^T x_j - v_j <= tol on all of Omega^c; else S_k+1 = S_k + the PER_ROUND most violated samples.

Every u_k solves a relaxation of the neuron's program, so ||u_k||_1 is a lower bound on its optimum, and the
first u_k that keeps every half-space is optimal (to Clarabel's accuracy); tol is violation_tol of the neuron's
own max y. A neuron that does not get there in MAX_ROUNDS rounds is left to the ADMM.
"""

from __future__ import annotations

import numpy as np

from .crossover import pulled_inside
from .problem import LayerProblem
from .reference import solve_reference

#: A neuron is nearly dead when its response is positive on at most this many samples ...
FEW_SAMPLES = 32
#: ... and on at most this fraction of them (small layers, P of a few hundred, stay with the ADMM).
FEW_FRACTION = 0.01
#: Half-spaces in the first relaxation, and the most violated ones added in each round.
FIRST = 64
PER_ROUND = 64
MAX_ROUNDS = 20
#: The certified bound is the last relaxation's l1 less this fraction (Clarabel's optimum, to its tolerances).
BOUND_SLACK = 1e-6


def nearly_dead(problem: LayerProblem) -> np.ndarray:
    """(M,) bools: the neurons solved by cutting planes: a relu layer with per-neuron budgets and the l1
    objective, and 0 < |Omega_m| <= min(FEW_SAMPLES, FEW_FRACTION P)."""
    M = problem.shape[2]
    if problem.activation != "relu" or not problem.per_neuron or problem.rows:
        return np.zeros(M, dtype=bool)
    count = problem.omega.sum(axis=1)
    return (count > 0) & (count <= min(FEW_SAMPLES, FEW_FRACTION * problem.shape[1]))


def solve_nearly_dead(problem: LayerProblem, violation_tol: float):
    """Cutting planes (module docstring) for each neuron of `problem`: (U (N, M), bounds (M,), solved (M,) bools);
    the columns and bounds of the neurons not solved are zero."""
    N, _, M = problem.shape
    U, bounds, solved = np.zeros((N, M)), np.zeros(M), np.zeros(M, dtype=bool)
    for m in range(M):
        answer = _cutting_planes(problem.neurons([m]), violation_tol)
        if answer is not None:
            U[:, m], bounds[m], solved[m] = answer[0], answer[1], True
    return U, bounds, solved


def _cutting_planes(neuron: LayerProblem, violation_tol: float):
    """(u, certified lower bound) for the one neuron of `neuron`, or None."""
    X, y, omega = neuron.X, neuron.Y[0], neuron.omega[0]
    V = np.broadcast_to(neuron.upper_bound(), neuron.Y.shape)[0]
    outside = np.flatnonzero(~omega)
    start = (neuron.original_weights[:, 0] if neuron.original_weights is not None else np.zeros(X.shape[0]))
    nearness = (start @ X - V)[outside]
    working = outside[np.argsort(-nearness, kind="stable")[:FIRST]]
    tol = violation_tol * float(np.max(y))
    for _ in range(MAX_ROUNDS):
        relaxed = _relaxation(neuron, np.union1d(np.flatnonzero(omega), working))
        result = solve_reference(relaxed)
        if result.status != "optimal":
            return None
        u = pulled_inside(relaxed, result.U)[:, 0]
        excess = np.where(omega, -np.inf, u @ X - V)
        violated = np.flatnonzero(excess > tol)
        if not violated.size:  # optimal, once its fit is measured within the budget (Clarabel's, pulled inside)
            within = neuron.columns_within_budget(u[:, None], 0.0, violation_tol)[0]
            return (u, (1 - BOUND_SLACK) * result.objective) if within else None
        violated = np.setdiff1d(violated, working)
        if not violated.size:  # violated only where Clarabel's accuracy allows: not a relaxation's answer
            return None
        worst = violated[np.argsort(-excess[violated], kind="stable")[:PER_ROUND]]
        working = np.union1d(working, worst)
    return None


def _relaxation(neuron: LayerProblem, samples: np.ndarray) -> LayerProblem:
    """The neuron's program on the columns `samples` of X only (all of Omega, some of Omega^c)."""
    def columns(array):
        return None if array is None else array[:, samples]

    return LayerProblem(neuron.X[:, samples], neuron.Y[:, samples], neuron.eps, "relu", upper=columns(neuron.upper),
                        original_weights=neuron.original_weights, l1_weights=neuron.l1_weights)
