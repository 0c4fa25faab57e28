"""solvers/certificates.py: the gap rule, the support function of the constraint set, and Farkas certificates."""

from types import SimpleNamespace

import numpy as np
import pytest

from solvers.certificates import certify_infeasible, support_function, within_gap


def test_the_gap_rule_is_relative_plus_absolute():
    assert within_gap(1.01, 1.0, 0.01, 0.0) and not within_gap(1.02, 1.0, 0.01, 0.0)
    assert within_gap(1e-7, 0.0, 0.0, 1e-6) and not within_gap(2e-6, 0.0, 0.0, 1e-6)
    np.testing.assert_array_equal(within_gap(np.array([1.0, 2.0]), np.array([1.0, 1.0]), 0.1, 0.0), [True, False])


def working_set(Y, omega):
    return SimpleNamespace(Y=Y, on_omega=omega.astype(float), rho=np.ones(Y.shape[0]))


@pytest.mark.parametrize("relu", [False, True])
def test_the_support_function_is_attained_at_a_point_of_the_set(relu):
    """sigma_C(lam) = max over z in C of <lam, z>: the maximizer y + eps lam_Omega / ||lam_Omega|| on Omega and V
    on Omega^c attains the formula, and no random point of C exceeds it."""
    rng = np.random.default_rng(0)
    M, P, eps = 3, 8, 0.7
    Y = rng.standard_normal((M, P))
    omega = rng.random((M, P)) < 0.6 if relu else np.ones((M, P), dtype=bool)
    upper = rng.standard_normal((M, P)) if relu else 0.0
    lam = np.where(omega, rng.standard_normal((M, P)), rng.random((M, P)))  # >= 0 on Omega^c
    s = working_set(Y, omega)
    sigma = support_function(np, s, lam, eps, upper, SimpleNamespace(relu=relu, coupled=False))
    on = lam * omega
    best = np.where(omega, Y + eps * on / np.linalg.norm(on, axis=1, keepdims=True), upper)
    np.testing.assert_allclose(np.sum(lam * best, axis=1), sigma, rtol=1e-12)
    for _ in range(50):
        step = rng.standard_normal((M, P)) * omega
        inside = np.where(omega, Y + eps * rng.random((M, 1)) * step / np.linalg.norm(step, axis=1, keepdims=True),
                          upper - rng.random((M, P)))
        assert np.all(np.sum(lam * inside, axis=1) <= sigma + 1e-12)


def test_a_response_outside_the_row_space_by_more_than_eps_is_certified_infeasible_and_no_other():
    rng = np.random.default_rng(1)
    N, P = 4, 30
    X = rng.standard_normal((N, P))
    Y = rng.standard_normal((1, P))
    beyond = Y - (Y @ np.linalg.pinv(X)) @ X  # the part of y no U^T X reaches
    distance = float(np.linalg.norm(beyond))
    s = working_set(Y, np.ones((1, P), dtype=bool))
    increment = -beyond  # X increment^T = 0 and <y, increment> = -distance^2
    x_norm = np.linalg.norm(X, 2)

    def certified(eps):
        flags = SimpleNamespace(relu=False, coupled=False)
        return bool(certify_infeasible(np, s, flags, increment, X @ increment.T, x_norm, np.array([eps]), 0.0)[0])

    assert certified(0.9 * distance)
    assert not certified(1.1 * distance)  # feasible: the least-squares fit keeps this budget
