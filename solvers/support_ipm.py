"""Neurons the ADMM cannot finish, solved on their supports by the interior point and certified on the whole layer.

A neuron whose repaired weights (repair.py) keep the budget but miss the gap tolerance check after check has
found its support S, give or take a few weights, while its l1 and its dual bound converge slowly (LeNet-300-100
layer 1, P = 10,000, float32: one neuron ran 1,040 iterations, ending at 0.36% above its optimum under a gap
tolerance grown with the iterations). On S the program is small:

    min  sum_{i in S} c_i |u_i|   s.t.   ||X_{S,Omega}^T u - y_Omega|| <= eps,   X_{S,A}^T u <= v_A - tau.

Omega's fit is a quadratic in u: with G = X_{S,Omega} X_{S,Omega}^T = R^T R (Cholesky) and g = R^-T X_{S,Omega}
y_Omega it equals ||R u - g||^2 + ||y_Omega||^2 - ||g||^2, so the cone has |S| + 1 entries whatever |Omega|, of
radius e = sqrt(eps^2 - ||y_Omega||^2 + ||g||^2). A is a working set of Omega^c grown by cutting planes
(cutting_planes.py): first the samples the ADMM's weights come nearest to activating (FIRST_PER_ROOT), then the
violated ones. Clarabel (its own interface: CVXPY's canonicalization would cost as much as the solve) returns u and the
duals mu of the cone and nu >= 0 of the cuts. lam = (mu r / e on Omega, nu on A, 0 elsewhere), r the fit's
residual, is a dual point of the neuron's whole program (the multiplier of ||r|| <= eps is mu ||r|| / e, along
r), so weak duality (certificates.dual_bound) bounds the optimum by -t sigma_C(lam) with t = 1 / max_i
|(X lam)_i| / c_i over every row of X. Rows off S where |(X lam)_i| / c_i exceeds its level on S are the weights
whose entry would lower the objective: up to GROW of the largest join S (the working sets of Lasso solvers) and
the program is solved again, until the bound proves u within the gap tolerance. Clarabel's accuracy bears only
on how tight the bound is (its duals meet |(X lam)_i| = c_i on S to about 1e-5); the budget is measured exactly
by the caller.
"""

from __future__ import annotations

import math

import clarabel
import numpy as np
import scipy.sparse as sparse

from .certificates import within_gap
from .reference import HIGH_ACCURACY

#: Omega^c samples in the first working set, at least FIRST and FIRST_PER_ROOT sqrt(P), and the most violated ones
#: added in each round. LeNet-300-100 layer 1: the constraints active at the optimum were 49 to 67 (the last of
#: them ranked up to 93rd by the ADMM's weights) at P = 10,000 and 130 to 203 (ranked up to 299th) at P = 55,000;
#: 128 and 300 first samples took 2 to 3 solves a neuron, a fixed 128 at P = 55,000 4 to 7 (23 s for 8 neurons
#: against 15); at P = 10,000 a first set of 32 took 18 solves for 3 neurons against 8.
FIRST = 128
FIRST_PER_ROOT = 1.28
PER_ROUND = 64
#: Weights joining the support in each round, and the most Clarabel solves for one neuron.
GROW = 128
MAX_SOLVES = 12
#: The largest support solved: Clarabel factors a dense |S| x |S| block at each of its iterations.
MAX_SUPPORT = 512
#: The largest support solved before a neuron has run half of max_iter, as the interior point's cost against the
#: ADMM's: Clarabel factors about (2 |S|)^3 / 3 flops at each of its ~25 iterations (|S| weights, about as many
#: active cuts), a few solves a neuron, at a rate ~10 times below the ADMM's products; an iteration costs the
#: neuron 4 N P, and a straggler has hundreds left. Measured (2 cores): LeNet-300-100 layer 1 (|S| = 159, N = 655
#: rows in use, P = 5,000; (2 |S|)^3 = 10 N P) in 0.2 s; ResNet-20's layer2.0.conv1 and layer2.1.conv1 in cascade
#: (|S| = 135 of 145 and 140 to 220 of 289, P = 5,000; 15 to 60 N P, 300 to 460 cuts) 1 to 12 s a neuron,
#: where the ADMM ends the whole layer in 7 and 13 s.
SUPPORT_COST = 12
#: The ridge on the fit's Gram matrix, relative to its largest diagonal entry (_fit_cone).
RIDGE = 1e-12
#: Weights below this fraction of the largest (each times its row's norm) are set to zero.
ZERO_TOL = 1e-9
#: The budget aimed at, as a fraction of eps (Clarabel's fit errors are below 1e-8 of it).
AIM = 1 - 1e-6


class LayerX:
    """The layer's X (samples.SampleBlocks, float64, on any device) as a support solve reads it, each answer on
    the host: no |S| x P array is made (the fit's Gram matrix is accumulated a slice of samples at a time).
    `scale` (N,): the rows' norms the weights are thresholded in (factor.LayerInput.scale, on the host)."""

    def __init__(self, X, be, scale: np.ndarray):
        self.X, self.be, self.scale = X, be, scale

    def fit(self, rows: np.ndarray, omega: np.ndarray, y: np.ndarray) -> tuple:
        """(X_{S,Omega} X_{S,Omega}^T, X_{S,Omega} y_Omega) for the rows S."""
        return self.X.rows_gram(rows, omega, y)

    def columns(self, rows: np.ndarray, samples: np.ndarray) -> np.ndarray:
        """X[rows][:, samples]."""
        return self.be.to_host(self.X.columns(self.be.asarray(samples)))[rows]

    def response(self, weights: np.ndarray) -> np.ndarray:
        """w^T X (P,) for w (N,)."""
        return self.be.to_host(self.X.left_times(self.be.asarray(weights[None, :])))[0]

    def times(self, lam: np.ndarray) -> np.ndarray:
        """X lam (N,) for lam (P,)."""
        return self.be.to_host(self.X.times_transposed(self.be.asarray(lam[None, :]))[0])[:, 0]


def affordable(weights: np.ndarray, samples: int, iterations: int, rescue_after: int) -> bool:
    """May the neuron with the ADMM's `weights` (N,) be solved on its support after `iterations` iterations on
    `samples` samples: when the interior point costs little against the ADMM, (2 |S|)^3 <= SUPPORT_COST N P,
    or as a rescue, whatever it costs, once the neuron has run `rescue_after` iterations?"""
    return cheap(int(np.count_nonzero(weights)), weights.size, samples) or iterations >= rescue_after


def cheap(support: int, inputs: int, samples: int) -> bool:
    """Does a support of `support` weights cost the interior point little against the ADMM on a layer of `inputs`
    rows and `samples` samples: (2 |S|)^3 <= SUPPORT_COST N P?"""
    return (2 * support) ** 3 <= SUPPORT_COST * inputs * samples


def solve_on_support(neuron: dict, X: LayerX, weights: np.ndarray, gap_allowed: float):
    """(u, bound) for one neuron, or None when its support is empty or larger than MAX_SUPPORT, cannot fit y
    within the budget, or Clarabel fails. `neuron` holds its host float64
    arrays: y, omega (bools), upper (P,), eps, cost (N,) (the l1 weights), tau (the Omega^c margin); `weights`
    (N,) are the ADMM's. Where no u on the support fits y within eps, the support grows (_grown_to_fit). The loop
    ends when bound >= (1 - gap_allowed) l1(u) or no weight off the support would lower the objective."""
    support = np.flatnonzero(weights != 0)
    if not 0 < support.size <= MAX_SUPPORT:
        return None
    outside = np.flatnonzero(~neuron["omega"])
    nearest = np.argsort((neuron["upper"] - X.response(weights))[outside], kind="stable")
    first = max(FIRST, math.ceil(FIRST_PER_ROOT * math.sqrt(neuron["y"].size)))
    cuts, answer, solves = outside[nearest[:first]], None, 0
    while solves < MAX_SOLVES and support.size <= MAX_SUPPORT:
        cone = (_fit_cone(*X.fit(support, neuron["omega"], neuron["y"]), neuron["y"], neuron["omega"],
                          AIM * neuron["eps"]) if neuron["omega"].any() else _no_fit(neuron))
        solution, cuts, used = (None, cuts, 0) if cone is None else _with_cuts(
            neuron, X, support, cone, cuts, MAX_SOLVES - solves)
        solves += used
        if cone is None:  # no weights on S fit y within eps: S grows, and is solved again
            grown = _grown_to_fit(neuron, X, support, weights)
            if grown.size == support.size:
                return answer
            support, solves = grown, solves + 1
            continue
        if solution is None:
            return answer
        weights, mu, nu, response = solution
        lam = np.zeros(response.size)
        lam[neuron["omega"]] = mu * (response - neuron["y"])[neuron["omega"]] / cone[2]
        lam[cuts] = np.maximum(nu, 0.0)
        over, bound = _bound(neuron, lam, X.times(lam))
        answer = (weights, bound)
        # On S, |(X lam)_i| = c_i times the duals' common factor: rows off S above that level would enter.
        entering = np.setdiff1d(np.flatnonzero(over > (1 + 1e-9) * float(over[support].max())), support)
        if within_gap(float(neuron["cost"] @ np.abs(weights)), bound, gap_allowed, 0.0) or not entering.size:
            return answer
        support = np.union1d(support, entering[np.argsort(-over[entering], kind="stable")[:GROW]])
    return answer


def _grown_to_fit(neuron: dict, X: LayerX, support: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """`support` and the GROW rows off it along which the fit's error on Omega falls fastest per unit of cost,
    largest |X_{i,Omega} (y - w^T X)_Omega| / c_i (the Lasso's entering rule), for `weights` (N,) too far from y
    on every u supported on S."""
    error = np.where(neuron["omega"], neuron["y"] - X.response(weights), 0.0)
    cost = neuron["cost"]
    slope = np.abs(X.times(error)) / np.where(cost > 0, cost, np.inf)
    slope[support] = 0.0
    entering = np.flatnonzero(slope > 0)
    return np.union1d(support, entering[np.argsort(-slope[entering], kind="stable")[:GROW]])


def _with_cuts(neuron: dict, X: LayerX, support: np.ndarray, cone, cuts: np.ndarray, solves: int):
    """((weights (N,), mu, nu, response (P,)), cuts, solves used): the support's program, the PER_ROUND most
    violated samples of Omega^c added to the cuts after each solve until none is (within tau / 2 of its bound);
    the solution is None when Clarabel fails or `solves` run out first. The weights are thresholded (_thresholded);
    the response and the duals are those of Clarabel's u."""
    upper, tau = neuron["upper"], neuron["tau"]
    for used in range(1, solves + 1):
        solved = _clarabel(cone, X.columns(support, cuts).T, upper[cuts] - tau, neuron["cost"][support])
        if solved is None:
            return None, cuts, used
        u, mu, nu = solved
        weights = np.zeros(X.scale.size)
        weights[support] = u
        response = X.response(weights)
        excess = np.where(neuron["omega"], -np.inf, response - upper)
        violated = np.setdiff1d(np.flatnonzero(excess > -tau / 2), cuts)
        if not violated.size:
            weights[support] = _thresholded(u, X.scale[support])
            return (weights, mu, nu, response), cuts, used
        cuts = np.union1d(cuts, violated[np.argsort(-excess[violated], kind="stable")[:PER_ROUND]])
    return None, cuts, solves


def _thresholded(u: np.ndarray, row_norms: np.ndarray) -> np.ndarray:
    """u with exact zeros where |d_i u_i| <= ZERO_TOL max_i |d_i u_i| (d: the rows' norms; reference.py's rule):
    an interior point leaves the weights it prices out tiny, not zero."""
    size = np.abs(u) * row_norms
    return np.where(size <= ZERO_TOL * max(float(size.max()), 1e-300), 0.0, u)


def _no_fit(neuron: dict):
    """The cone of a dead neuron (Omega empty): no fit to keep, its program is the cuts alone; its scale, which
    _clarabel divides the data by, is max |v| (as tiny as 1e-3 of the layer's max y on ResNet-20)."""
    return np.zeros((0, 0)), np.zeros(0), float(np.max(np.abs(neuron["upper"]))) or 1.0


def _fit_cone(G: np.ndarray, Ay: np.ndarray, y: np.ndarray, omega: np.ndarray, eps: float):
    """(R, g, e): ||A^T u - y_Omega|| <= eps as ||R u - g|| <= e (module docstring), given G = A A^T and A y_Omega
    for A = X_{S,Omega}, or None when no u on these rows fits y within eps. R is the Cholesky factor of
    G + delta I and g = R^-T A y: then ||R u - g||^2 + ||y_Omega||^2 - ||g||^2 = fit^2 + delta ||u||^2, so the
    cone lies a hair inside the budget (delta = RIDGE max_i G_ii) and rows of X that are zero on Omega (a pixel
    never lit where the neuron is active) factor too."""
    G = G + RIDGE * max(float(np.max(np.diag(G), initial=0.0)), 1e-300) * np.eye(G.shape[0])
    try:  # NumPy's LAPACK, not SciPy's: SciPy's OpenBLAS is a second thread pool, whose threads contend with the
        # spinning ones of NumPy's (inside a solve a 0.2 ms factorization took 3 to 100 ms)
        L = np.linalg.cholesky(G)
    except np.linalg.LinAlgError:
        return None
    R, g = L.T, np.linalg.solve(L, Ay)
    y_omega = y[omega]
    radius2 = eps**2 - (float(y_omega @ y_omega) - float(g @ g))
    return (R, g, float(np.sqrt(radius2))) if radius2 > 0 else None


def _clarabel(cone, B: np.ndarray, limits: np.ndarray, cost: np.ndarray):
    """min cost^T t  s.t.  -t <= u <= t,  B u <= limits,  ||R u - g|| <= e, in x = (u, t): (u, mu, nu) or None.
    The data are divided by e (the solution by the same), so Clarabel's absolute tolerances are relative."""
    R, g, radius = cone
    k, m, fits = B.shape[1], B.shape[0], R.shape[0] > 0
    identity, zeros = sparse.identity(k, format="csc"), sparse.csc_matrix((k, k))
    rows = [sparse.hstack([identity, -identity]), sparse.hstack([-identity, -identity]),
            sparse.hstack([sparse.csc_matrix(B), sparse.csc_matrix((m, k))])]
    b = [np.zeros(2 * k), limits / radius]
    cones = [clarabel.NonnegativeConeT(2 * k + m)]
    if fits:
        rows += [sparse.csc_matrix((1, 2 * k)), sparse.hstack([sparse.csc_matrix(-R), zeros])]
        b += [[1.0], -g / radius]
        cones.append(clarabel.SecondOrderConeT(k + 1))
    A, b = sparse.vstack(rows).tocsc(), np.concatenate(b)
    q = np.concatenate([np.zeros(k), cost / np.median(cost[cost > 0]) if np.any(cost > 0) else cost])
    settings = clarabel.DefaultSettings()
    settings.verbose = False
    for name, value in HIGH_ACCURACY["CLARABEL"].items():
        setattr(settings, name, value)
    solution = clarabel.DefaultSolver(sparse.csc_matrix((2 * k, 2 * k)), q, A, b, cones, settings).solve()
    if str(solution.status) not in ("Solved", "AlmostSolved"):  # the caller measures u and its bound exactly
        return None
    x, z = np.asarray(solution.x), np.asarray(solution.z)
    # Every row and the objective are scaled alike: the duals are those of the unscaled program times one factor,
    # which the bound's scaling into the box removes.
    return radius * x[:k], z[2 * k + m] if fits else 0.0, z[2 * k:2 * k + m]


def _bound(neuron: dict, lam: np.ndarray, X_lam: np.ndarray):
    """(|X lam| / c per row, the weak-duality bound -t sigma_C(lam)) for lam >= 0 on Omega^c: t lam is a dual
    point for any t > 0 that keeps |X t lam| <= c, and -t sigma_C(lam) is largest at t = 1 / max_i |(X lam)_i| / c_i
    (certificates.dual_bound scales into the box only downward: there lam's size is the ADMM's)."""
    cost, omega = neuron["cost"], neuron["omega"]
    box = np.abs(X_lam)
    over = np.where(cost > 0, box / np.where(cost > 0, cost, 1.0), np.where(box > 0, np.inf, 0.0))
    on_omega = lam[omega]
    sigma = (on_omega @ neuron["y"][omega] + neuron["eps"] * np.linalg.norm(on_omega)
             + lam[~omega] @ neuron["upper"][~omega])
    return over, -sigma / max(float(over.max()), 1e-300)
