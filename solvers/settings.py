"""Every option of the ADMM (admm.py) with its default and its check, in one frozen value.

`AdmmSettings.of(options)` builds it from solve_admm's keywords (an unknown name is a TypeError naming it, as for
any call), `AdmmSettings.published()` is the published Net-Trim configuration, and `check_for(problem)` adds the
checks that need the program. The layer-level numbers (rho, beta, response_scale, cost_unit, objective_scale) are
filled in by admm.iteration_constants before the iteration reads them.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import numpy as np

from .arrays import backend
from .factor import factored_side

#: Options that make this ADMM the published Net-Trim solver (Aghasi et al., SIAM J. Math. Data Sci. 2020):
#: fixed rho = 1 on data scaled by c0 = 0.3 sqrt(max X X^T), no over-relaxation, no warm start, no
#: equilibration, stop when ||dU||_F < 5e-9 N M, and return the soft-thresholded iterate as it is.
PUBLISHED_OPTIONS = dict(
    rho="published", beta="published", adaptive_rho=False, relaxation=1.0, warm_start=False,
    equilibrate=False, stopping="step", restore=False, anderson=0,
)


@dataclasses.dataclass(frozen=True, eq=False)
class AdmmSettings:
    """The ADMM's options (admm.py's module docstring says what each does).

    Where and how precisely: device ("cpu", "cuda", "cuda:K", a torch.device or an array API device), dtype of
    the iterations ("float64" | "float32"; checks and measures are float64), tf32 (float32 products on tensor
    cores), memory_limit (bytes; None: 90% of the free memory), u_step ("auto" | "features" | "samples": the
    Gram side factored).
    When to stop: max_iter; rel_tol and abs_tol (residuals, Boyd et al. 2011 sec. 3.3) checked every
    check_every iterations; stopping "residuals" or "step" (the published ||U_k - U_{k-1}||_F < step_tol);
    gap_tol, the relative duality gap a neuron is accepted at (growing after gap_patience iterations);
    violation_tol, the Omega^c excess allowed relative to response_scale; time_limit (seconds); callback(iteration,
    info) at every check, True stops.
    The iteration: rho and beta (None: the layer's, "published": the published scaling), adaptive_rho (residual
    balancing), relaxation in (0, 2), anderson (memory of the acceleration, 0: off), warm_start (from the
    original weights or `initial`), equilibrate (rows of X to unit norm), initial (N, M) start.
    Acceptance: restore and restore_rounds (budget tightening rounds after a miss), repair_misses (repairs on the
    support).
    Layer numbers (iteration_constants): response_scale (max|Y|), cost_unit, objective_scale.
    """

    device: object = "cpu"
    dtype: object = "float64"
    tf32: bool = False
    memory_limit: float | None = None
    u_step: str = "auto"
    max_iter: int = 10_000
    rel_tol: float = 1e-4
    abs_tol: float = 1e-7
    check_every: int = 10
    stopping: str = "residuals"
    step_tol: float | None = None
    gap_tol: float = 5e-3
    gap_patience: int = 500
    violation_tol: float = 1e-5
    time_limit: float | None = None
    callback: Callable | None = None
    rho: float | str | None = None
    beta: float | str | None = None
    adaptive_rho: bool = True
    relaxation: float = 1.6
    anderson: int = 5
    warm_start: bool = True
    equilibrate: bool = True
    initial: np.ndarray | None = None
    restore: bool = True
    restore_rounds: int = 4
    repair_misses: bool = True
    response_scale: float | None = None
    cost_unit: float = 1.0
    objective_scale: float | None = None

    @classmethod
    def of(cls, options: dict) -> AdmmSettings:
        """The settings of solve_admm's keyword options; a name that is not an option raises TypeError."""
        names = {field.name for field in dataclasses.fields(cls)}
        for name in options:
            if name not in names:
                raise TypeError(f"solve_admm() got an unexpected keyword argument {name!r}")
        return cls(**options)

    @classmethod
    def published(cls, **overrides) -> AdmmSettings:
        """The published Net-Trim configuration (PUBLISHED_OPTIONS), with `overrides`."""
        return cls.of({**PUBLISHED_OPTIONS, **overrides})

    def __post_init__(self):
        if self.dtype not in ("float32", "float64", np.float32, np.float64):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")
        if not 0 < self.relaxation < 2:
            raise ValueError(f"relaxation must be in (0, 2), got {self.relaxation}")
        if (int(self.check_every) < 1 or int(self.max_iter) < 1 or int(self.restore_rounds) < 0
                or not self.gap_patience >= 1):
            raise ValueError("check_every, max_iter and gap_patience must be positive integers, restore_rounds >= 0")
        if self.stopping not in ("residuals", "step"):
            raise ValueError(f"stopping must be 'residuals' or 'step', got {self.stopping!r}")
        if self.rel_tol < 0 or self.abs_tol < 0 or self.gap_tol < 0:
            raise ValueError("rel_tol, abs_tol and gap_tol must be >= 0")
        limit = self.memory_limit
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int | float) or not limit > 0):
            raise ValueError(f"memory_limit must be a positive number of bytes or None, got {limit!r}")
        limit = self.time_limit
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int | float) or not limit >= 0):
            raise ValueError(f"time_limit must be a number of seconds >= 0 or None, got {limit!r}")

    def check_for(self, problem) -> None:
        """The checks that need the program (its shape) or the device; a ValueError names the option."""
        backend(self.device)
        factored_side(*problem.X.shape, self.u_step)
        if self.initial is not None:
            N, _, M = problem.shape
            if np.shape(self.initial) != (N, M) or not np.all(np.isfinite(self.initial)):
                raise ValueError(f"initial must be a finite (N, M) = {(N, M)} array, got shape "
                                 f"{np.shape(self.initial)}")

    def with_deadline(self) -> AdmmSettings:
        """time_limit (seconds from now, shared by every chunk) turned into a callback that stops the iteration at
        the first check past it, as max_iter does."""
        if self.time_limit is None:
            return self
        deadline, callback = time.perf_counter() + self.time_limit, self.callback

        def stop_at_the_deadline(iteration, info):
            stop = callback(iteration, info) if callback is not None else False
            return bool(stop) or time.perf_counter() > deadline

        return dataclasses.replace(self, time_limit=None, callback=stop_at_the_deadline)

    def replace(self, **changes) -> AdmmSettings:
        """A copy with `changes` (checked again)."""
        return dataclasses.replace(self, **changes)
