"""Net-Trim layer programs and their solvers (no torch, no networks: one layer's math).

    >>> from solvers import LayerProblem, relative_budget, solve
    >>> problem = LayerProblem(X, Y, eps=relative_budget(Y, 0.05), activation="relu")
    >>> result = solve(problem)                      # the fast ADMM on the CPU
    >>> result = solve(problem, backend="cvxpy")     # the CVXPY + Clarabel reference
"""

import time

from .admm import solve_admm
from .arrays import backend, device_to_host_transfers
from .copies import distinct_rows, spread_result
from .memory import MemoryLimitError
from .problem import ACTIVATIONS, LayerProblem, relative_budget
from .reference import solve_reference
from .result import LayerResult, within_budget
from .reweight import solve_reweighted
from .settings import PUBLISHED_OPTIONS, AdmmSettings
from .sufficient import compressed, expand_result

BACKENDS = ("admm", "cvxpy")


def solve(problem: LayerProblem, backend: str = "admm", *, reweight: int = 0, delta: float = 0.1,
          **options) -> LayerResult:
    """Solve one layer program. backend "admm" (options: see solve_admm) or "cvxpy" (see solve_reference).

    reweight=K adds K rounds of reweighted l1 (see reweight.py; delta is its relative floor), each warm started
    from the previous round and keeping the same budget; with a time_limit, no round starts after it.

    Inputs that are copies of one another (equal rows of X) are solved as one variable and the result put back
    on the original rows (copies.py; info["input_copies"] counts the rows merged away): the same optimum. A
    linear program with many more samples than inputs is solved over its sufficient statistics (sufficient.py;
    info["compressed_samples"] = [P, k]): the same program with k <= N samples, measured on the original ones.
    """
    if not isinstance(problem, LayerProblem):
        raise ValueError(f"problem must be a LayerProblem, got {type(problem).__name__}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")

    start = time.perf_counter()
    program, options, copies = distinct_rows(problem, options)
    full = program
    program, statistics = compressed(program)
    first_start = options.pop("initial", None) if backend == "admm" else None

    def solve_once(program: LayerProblem, start) -> LayerResult:
        if backend == "cvxpy":
            return solve_reference(program, **options)
        return solve_admm(program, **options, initial=first_start if start is None else start)

    limit = options.get("time_limit")
    result = solve_once(program, None) if reweight == 0 else solve_reweighted(
        program, solve_once, reweight, delta, stop=lambda: limit is not None and time.perf_counter() > start + limit)
    if statistics is not None:
        result = expand_result(full, statistics, result)
    return result if copies is None else spread_result(problem, copies, result, time.perf_counter() - start)


__all__ = [
    "ACTIVATIONS", "AdmmSettings", "BACKENDS", "LayerProblem", "MemoryLimitError", "LayerResult", "PUBLISHED_OPTIONS",
    "backend", "device_to_host_transfers", "relative_budget", "solve", "solve_admm", "solve_reference",
    "solve_reweighted", "within_budget",
]
