"""solvers/constraints.py: the Z-step's Euclidean projection onto the constraint set C."""

from types import SimpleNamespace

import numpy as np
import pytest

from solvers.constraints import ceiling, project


@pytest.mark.parametrize(("relu", "coupled"), [(False, False), (True, False), (True, True)])
def test_the_projection_lands_in_the_set_and_no_point_of_the_set_is_closer(relu, coupled):
    """P(A) in C = {||(Z - Y)_Omega|| <= eps (per row, or in total), Z_Omega^c <= V}, A itself when A is in C,
    and <A - P(A), Z - P(A)> <= 0 for every Z in C (the projection's characterization on a convex set)."""
    rng = np.random.default_rng(0)
    M, P = 3, 10
    Y = rng.standard_normal((M, P))
    omega = rng.random((M, P)) < 0.6 if relu else np.ones((M, P), dtype=bool)
    upper = rng.standard_normal((M, P))
    eps = 0.5 if coupled else np.full((M, 1), 0.5)
    s = SimpleNamespace(Y=Y, on_omega=omega.astype(float), eps=eps,
                        ceiling=ceiling(np, omega.astype(float), upper) if relu else None)

    def norms(Z):
        fit = np.linalg.norm((Z - Y) * omega, axis=1)
        return np.linalg.norm(fit) if coupled else fit

    def inside(Z, slack=1e-12):
        below = np.all((Z <= upper + slack) | omega) if relu else True
        return bool(np.all(norms(Z) <= 0.5 + slack) and below)

    A = Y + 2 * rng.standard_normal((M, P))
    flags = SimpleNamespace(relu=relu, coupled=coupled)
    projected = project(np, A, s, flags)
    assert inside(projected) and not inside(A)
    np.testing.assert_allclose(project(np, projected, s, flags), projected, atol=1e-12)
    for _ in range(200):
        direction = rng.standard_normal((M, P)) * omega
        scale = 0.5 * rng.random() / max(float(np.max(norms(Y + direction))), 1e-12) if coupled else (
            0.5 * rng.random((M, 1)) / np.linalg.norm(direction, axis=1, keepdims=True))
        Z = np.where(omega, Y + scale * direction, upper - rng.random((M, P))) if relu else Y + scale * direction
        assert inside(Z)
        assert np.sum((A - projected) * (Z - projected)) <= 1e-9
