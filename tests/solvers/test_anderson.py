"""solvers/anderson.py: Anderson acceleration of a fixed-point iteration, per neuron."""

import numpy as np
import pytest

from solvers.anderson import Anderson, memory_or_none
from solvers.arrays import backend


def contraction(seed: int, M: int = 3, P: int = 5, N: int = 2, radius: float = 0.97):
    """T(zeta) = A_m zeta_m + b_m for each neuron m, zeta_m = (row m of zeta_z, column m of zeta_w)."""
    rng = np.random.default_rng(seed)
    size = P + N
    maps = []
    for _ in range(M):
        Q, _ = np.linalg.qr(rng.standard_normal((size, size)))
        maps.append((Q @ np.diag(radius * rng.uniform(0.5, 1.0, size)) @ Q.T, rng.standard_normal(size)))

    def image(zeta_z, zeta_w):
        stacked = np.concatenate([zeta_z, zeta_w.T], axis=1)
        new = np.stack([A @ v + b for (A, b), v in zip(maps, stacked, strict=True)])
        return new[:, :P], new[:, P:].T.copy()

    fixed = np.stack([np.linalg.solve(np.eye(size) - A, b) for A, b in maps])
    return image, (fixed[:, :P], fixed[:, P:].T)


def steps_to_converge(image, fixed, accelerator, limit=2000, tol=1e-8):
    zeta = (np.zeros_like(fixed[0]), np.zeros_like(fixed[1]))
    for k in range(1, limit + 1):
        f_z, f_w = image(*zeta)
        zeta = accelerator.step(f_z, f_w, accelerate=k % 10 != 0) if accelerator is not None else (f_z, f_w)
        error = max(np.abs(zeta[0] - fixed[0]).max(), np.abs(zeta[1] - fixed[1]).max())
        if error < tol:
            return k
    return limit


def test_anderson_reaches_the_fixed_point_of_a_slow_contraction_far_sooner():
    image, fixed = contraction(0)
    plain = steps_to_converge(image, fixed, None)
    accelerated = steps_to_converge(image, fixed, Anderson(backend("cpu"), 7))
    assert plain > 200 and accelerated < plain / 5  # 315 and 21 steps


def test_memory_zero_is_no_acceleration_and_a_negative_one_is_refused():
    assert memory_or_none(backend("cpu"), 0, False) is None
    with pytest.raises(ValueError, match="anderson"):
        memory_or_none(backend("cpu"), -1, False)
