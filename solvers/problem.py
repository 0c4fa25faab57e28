"""The Net-Trim layer program as data, with its validation and its exact measures.

A trained layer maps inputs X (N x P, samples are columns, the bias row added by the caller) to outputs
Y (M x P). Net-Trim replaces the layer's weights by the solution U (N x M) of

    relu:    minimize ||U||_1  s.t.  ||(U^T X - Y)_Omega||_F <= eps,   (U^T X)_{Omega^c} <= V_{Omega^c}
    linear:  minimize ||U||_1  s.t.  ||U^T X - Y||_F <= eps

(with optional l1 weights C >= 0 the objective is sum_ij C_ij |U_ij|: reweighted l1, see reweight.py)

With structure="rows" the objective is instead the group norm over the rows of U,

    minimize sum_g c_g ||U_g,:||_F        (c_g >= 0: group_weights, 1 unless given)

over groups g of rows (rowgroups.py: consecutive blocks of group_size rows, a trailing bias row alone) under
the same constraints: row i holds every weight that reads input feature i, so a zero group is an input (a
neuron of the previous layer, or a channel's kh x kw rows) that the layer no longer reads. The rows couple
the neurons through the objective, so with either budget form the layer is one program.

where Omega = {(m, p): Y[m, p] > 0} and V is the cascade upper bound (0 unless given). A scalar eps is one
Frobenius budget for the whole layer (the paper's form, coupling all neurons); a length-M vector gives each
neuron m its own budget eps_m on row m, which splits the layer into M independent programs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import rowgroups
from .memo import per_array

ACTIVATIONS = ("relu", "linear")
STRUCTURES = ("weights", "rows")


def _as_finite_matrix(name: str, value, ndim: int = 2) -> np.ndarray:
    array = np.asarray(value, dtype=np.float64)
    if array.ndim != ndim:
        raise ValueError(f"{name} must be a {ndim}-D array, got shape {array.shape}")
    if not _finite(array):
        raise ValueError(f"{name} contains NaN or Inf")
    return array


@per_array
def _finite(array: np.ndarray) -> bool:
    """Are all of array's entries finite? (Kept while it lives: a budget search builds many programs on one X.)"""
    return bool(np.all(np.isfinite(array)))


def relative_budget(Y, g: float, per_neuron: bool = False):
    """The budget a user means by "relative eps" g: eps = g ||Y||_F, or eps_m = g ||y_m|| per neuron.

    The per-neuron form keeps the layer's total within the scalar one: sum_m (g ||y_m||)^2 = (g ||Y||_F)^2.
    """
    Y = _as_finite_matrix("Y", Y)
    if not np.isfinite(g) or g < 0:
        raise ValueError(f"g must be a finite number >= 0, got {g}")
    if per_neuron:
        return g * np.linalg.norm(Y, axis=1)
    return float(g * np.linalg.norm(Y))


def column_l1(U: np.ndarray, weights: np.ndarray | None = None, rows_per_block: int = 4096) -> np.ndarray:
    """(M,) sum_i C_ij |U_ij| of each column (C = weights, or ones), in blocks of rows: no N x M temporary."""
    total = np.zeros(U.shape[1])
    for first in range(0, U.shape[0], rows_per_block):
        block = np.abs(U[first:first + rows_per_block])
        total += (block if weights is None else weights[first:first + rows_per_block] * block).sum(axis=0)
    return total


@dataclass(frozen=True, eq=False)
class LayerProblem:
    """One layer's Net-Trim program (see the module docstring for the math).

    Parameters
    ----------
    X : (N, P) layer input, samples are columns; the caller includes the row of ones for a bias.
    Y : (M, P) the response to keep: relu(W^T X) for a relu layer, W^T X for a linear one.
    eps : float (one Frobenius budget for the layer) or (M,) array (per-neuron budgets).
    activation : "relu" or "linear".
    upper : optional (M, P) bound V on Omega^c (cascade mode); None means V = 0. Ignored entries on Omega.
    original_weights : optional (N, M) trained weights W; used to warm start and to check that V keeps
        them feasible, i.e. (W^T X) <= V on Omega^c.
    l1_weights : optional (N, M) nonnegative weights C of the objective sum C_ij |U_ij| (None: all ones).
    structure : "weights" (the l1 objective) or "rows" (the group norm over rows of the module docstring).
    group_weights : optional (G,) nonnegative weights c of the rows' objective (structure="rows" only).
    group_size : the rows per group of the rows' objective (rowgroups.py).
    """

    X: np.ndarray
    Y: np.ndarray
    eps: float | np.ndarray
    activation: str = "relu"
    upper: np.ndarray | None = None
    original_weights: np.ndarray | None = None
    l1_weights: np.ndarray | None = None
    structure: str = "weights"
    group_weights: np.ndarray | None = None
    group_size: int = 1
    omega: np.ndarray = field(init=False, repr=False)

    def __post_init__(self):
        X = _as_finite_matrix("X", self.X)
        Y = _as_finite_matrix("Y", self.Y)
        if X.shape[1] == 0:
            raise ValueError("X has no samples (P = 0): the layer program needs calibration data")
        if Y.shape[1] != X.shape[1]:
            raise ValueError(f"X and Y must have the same number of samples (columns): X is {X.shape}, Y is {Y.shape}")
        if Y.shape[0] == 0 or X.shape[0] == 0:
            raise ValueError(f"X and Y need at least one row: X is {X.shape}, Y is {Y.shape}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.activation == "relu" and np.any(Y < 0):
            raise ValueError("Y has negative entries, which a relu layer cannot produce (use activation='linear')")
        eps = self._checked_eps(self.eps, Y.shape[0])
        upper = None
        if self.upper is not None:
            if self.activation == "linear":
                raise ValueError("upper (the Omega^c bound V) only applies to activation='relu'")
            upper = _as_finite_matrix("upper", self.upper)
            if upper.shape != Y.shape:
                raise ValueError(f"upper must have Y's shape {Y.shape}, got {upper.shape}")
        weights = None
        if self.original_weights is not None:
            weights = _as_finite_matrix("original_weights", self.original_weights)
            if weights.shape != (X.shape[0], Y.shape[0]):
                raise ValueError(
                    f"original_weights must be (N, M) = {(X.shape[0], Y.shape[0])}, got {weights.shape}"
                )
        l1_weights = None
        if self.l1_weights is not None:
            l1_weights = _as_finite_matrix("l1_weights", self.l1_weights)
            if l1_weights.shape != (X.shape[0], Y.shape[0]):
                raise ValueError(f"l1_weights must be (N, M) = {(X.shape[0], Y.shape[0])}, got {l1_weights.shape}")
            if np.any(l1_weights < 0):
                raise ValueError("l1_weights must be >= 0")
        object.__setattr__(self, "l1_weights", l1_weights)
        object.__setattr__(self, "group_weights", self._checked_group_weights(X.shape[0], l1_weights))
        object.__setattr__(self, "X", X)
        object.__setattr__(self, "Y", Y)
        object.__setattr__(self, "eps", eps)
        object.__setattr__(self, "upper", upper)
        object.__setattr__(self, "original_weights", weights)
        object.__setattr__(self, "omega", Y > 0 if self.activation == "relu" else np.ones(Y.shape, dtype=bool))
        if weights is not None and self.activation == "relu":
            self._check_original_feasible(weights)

    def _checked_group_weights(self, N: int, l1_weights) -> np.ndarray | None:
        if self.structure not in STRUCTURES:
            raise ValueError(f"structure must be one of {STRUCTURES}, got {self.structure!r}")
        size = self.group_size
        if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 1:
            raise ValueError(f"group_size must be a positive int, got {self.group_size!r}")
        if self.structure == "weights":
            if self.group_weights is not None or self.group_size != 1:
                raise ValueError("group_weights and group_size only apply to structure='rows'")
            return None
        if l1_weights is not None:
            raise ValueError("l1_weights only apply to structure='weights'; use group_weights for rows")
        if self.group_weights is None:
            return None
        weights = _as_finite_matrix("group_weights", self.group_weights, ndim=1)
        groups = rowgroups.count(N, self.group_size)
        if weights.shape != (groups,) or np.any(weights < 0):
            raise ValueError(f"group_weights must be (G,) = ({groups},) and >= 0, got shape {weights.shape}")
        return weights

    @property
    def rows(self) -> bool:
        """Is the objective the group norm over U's rows (structure="rows")?"""
        return self.structure == "rows"

    @staticmethod
    def _checked_eps(eps, M: int):
        if np.ndim(eps) == 0:
            value = float(eps)
            if not np.isfinite(value) or value < 0:
                raise ValueError(f"eps must be a finite number >= 0, got {eps}")
            return value
        array = np.asarray(eps, dtype=np.float64)
        if array.shape != (M,):
            raise ValueError(f"eps must be a scalar or have one entry per neuron, shape ({M},), got {array.shape}")
        if not np.all(np.isfinite(array)) or np.any(array < 0):
            raise ValueError("eps must be finite and >= 0 for every neuron")
        return array

    def _check_original_feasible(self, weights: np.ndarray) -> None:
        response = weights.T @ self.X
        bound = self.upper_bound()
        excess = np.max(np.where(self.omega, -np.inf, response - bound), initial=-np.inf)
        scale = max(1.0, float(np.max(np.abs(response))))
        if excess > 1e-9 * scale:
            raise ValueError(
                "upper: the original weights violate the Omega^c bound V by "
                f"{excess:.3g} (V must be >= W^T X wherever Y = 0, e.g. V = W^T Xhat in cascade mode)"
            )

    @property
    def shape(self) -> tuple[int, int, int]:
        """(N, P, M): input features, samples, neurons."""
        return self.X.shape[0], self.X.shape[1], self.Y.shape[0]

    @property
    def per_neuron(self) -> bool:
        return np.ndim(self.eps) == 1

    def neurons(self, index) -> LayerProblem:
        """The program of the neurons `index` (a slice, indices or a mask over M) alone: with per-neuron
        budgets and the l1 objective the neurons are independent programs, so solving the pieces solves the
        layer. (With structure="rows" they are not; the pieces serve to leave out neurons whose optimum is 0.)"""
        if not self.per_neuron:
            raise ValueError("eps: a scalar (layer) budget couples the neurons, so the layer cannot be split")

        def rows(array):
            return None if array is None else array[index]

        def columns(array):
            return None if array is None else array[:, index]

        return LayerProblem(self.X, self.Y[index], self.eps[index], self.activation, rows(self.upper),
                            columns(self.original_weights), columns(self.l1_weights), self.structure,
                            self.group_weights, self.group_size)

    def response_scale(self) -> float:
        """The scale the program's violations are measured on: max|Y|, or max|V| where Y = 0 (dead neurons only,
        whose program is u^T x_j <= v_j alone); 0 when both are 0."""
        scale = float(np.max(np.abs(self.Y)))
        return float(np.max(np.abs(self.upper))) if scale == 0 and self.upper is not None else scale

    def upper_bound(self):
        """V as an array or the scalar 0."""
        return 0.0 if self.upper is None else self.upper

    def columns_within_budget(self, U, fit_rtol: float = 1e-3, violation_tol: float = 1e-5,
                              y_scale: float | None = None) -> np.ndarray:
        """(M,) bools: does column u_m keep fit_m <= eps_m (1 + fit_rtol) and its Omega^c excess <= violation_tol
        y_scale (response_scale() unless given: a layer's neurons may be measured on the layer's scale)? With a
        scalar eps the test is the layer's, the same for every column."""
        residual, violations = self._residual_and_violations(np.asarray(U, dtype=np.float64).T @ self.X)
        fit = np.linalg.norm(residual, axis=1 if self.per_neuron else None)
        return self._within(fit, violations, fit_rtol, violation_tol, y_scale)

    def result_within_budget(self, result, fit_rtol: float = 1e-3, violation_tol: float = 1e-5) -> np.ndarray:
        """columns_within_budget(result.U, ...) from the fit and violations make_result measured on its U (without
        them, measured again)."""
        if result.violations is None:
            return self.columns_within_budget(result.U, fit_rtol, violation_tol)
        return self._within(result.fit, result.violations, fit_rtol, violation_tol, None)

    def _within(self, fit, violations: np.ndarray, fit_rtol: float, violation_tol: float,
                y_scale: float | None) -> np.ndarray:
        """columns_within_budget's test on measured fit (per neuron, or the layer's) and (M,) Omega^c excesses."""
        y_scale = max(self.response_scale() if y_scale is None else y_scale, 1e-300)
        slack = 1e-12 * y_scale
        if self.per_neuron:
            return (np.asarray(fit) <= self.eps * (1 + fit_rtol) + slack) & (violations <= violation_tol * y_scale)
        ok = fit <= self.eps * (1 + fit_rtol) + slack and violations.max() <= violation_tol * y_scale
        return np.full(self.shape[2], bool(ok))

    def _residual_and_violations(self, response: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(U^T X - Y on Omega and 0 elsewhere, (M,) max over Omega^c of (U^T X - V)_+) from response = U^T X."""
        residual = np.where(self.omega, response - self.Y, 0.0)
        if self.activation != "relu":
            return residual, np.zeros(self.shape[2])
        excess = np.where(self.omega, 0.0, response - self.upper_bound())
        return residual, np.maximum(excess.max(axis=1), 0.0)

    def budget_total(self) -> float:
        """The layer's Frobenius budget: eps, or sqrt(sum eps_m^2) for per-neuron budgets."""
        return float(np.linalg.norm(self.eps)) if self.per_neuron else float(self.eps)

    def objective(self, U) -> float:
        """The program's objective at U: (weighted) l1, or the (weighted) sum of U's row norms."""
        U = np.asarray(U, dtype=np.float64)
        if self.rows:
            norms = rowgroups.norms(np, U, self.group_size)
            return float(norms.sum() if self.group_weights is None else self.group_weights @ norms)
        return float(column_l1(U, self.l1_weights).sum())

    def evaluate(self, U) -> dict:
        """Exact measures of weights U (N x M) on this program, in float64.

        objective:       ||U||_1, or sum C_ij |U_ij| with l1 weights C; sum_g c_g ||U_g,:|| for rows
        fit:             ||(U^T X - Y)_Omega||_F (per neuron, a length-M array, when eps is per neuron)
        max_violation:   max over Omega^c of (U^T X - V)_+ (0 for a linear layer)
        violations:      (M,) the same for each column
        response_error:  ||act(U^T X) - Y|| in the same form as fit: Proposition 1 bounds it by eps
        """
        U = np.asarray(U, dtype=np.float64)
        response = U.T @ self.X
        residual, violations = self._residual_and_violations(response)
        output_error = np.maximum(response, 0.0) - self.Y if self.activation == "relu" else residual
        axis = 1 if self.per_neuron else None
        return {
            "objective": self.objective(U),
            "fit": np.linalg.norm(residual, axis=axis),
            "max_violation": float(violations.max(initial=0.0)),
            "violations": violations,
            "response_error": np.linalg.norm(output_error, axis=axis),
        }
