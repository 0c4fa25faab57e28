"""Net-Trim layer programs and their solvers (no torch, no networks: one layer's math).

    >>> from solvers import LayerProblem, relative_budget, solve
    >>> problem = LayerProblem(X, Y, eps=relative_budget(Y, 0.05), activation="relu")
    >>> result = solve(problem)                      # the fast ADMM on the CPU
    >>> result = solve(problem, backend="cvxpy")     # the CVXPY + Clarabel reference
"""

from .admm import PUBLISHED_OPTIONS, solve_admm
from .arrays import array_module
from .problem import ACTIVATIONS, LayerProblem, relative_budget
from .reference import solve_reference
from .result import LayerResult, within_budget

BACKENDS = ("admm", "cvxpy")


def solve(problem: LayerProblem, backend: str = "admm", **options) -> LayerResult:
    """Solve one layer program. backend "admm" (options: see solve_admm) or "cvxpy" (see solve_reference)."""
    if not isinstance(problem, LayerProblem):
        raise ValueError(f"problem must be a LayerProblem, got {type(problem).__name__}")
    if backend == "admm":
        return solve_admm(problem, **options)
    if backend == "cvxpy":
        return solve_reference(problem, **options)
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


__all__ = [
    "ACTIVATIONS", "BACKENDS", "LayerProblem", "LayerResult", "PUBLISHED_OPTIONS", "array_module",
    "relative_budget", "solve", "solve_admm", "solve_reference", "within_budget",
]
