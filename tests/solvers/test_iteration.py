"""solvers/iteration.py: the W-step's proximal map, the working set's bookkeeping, and the one transfer a check
makes."""

from types import SimpleNamespace

import numpy as np
import pytest

from solvers.arrays import backend
from solvers.iteration import Iteration, WorkingSet, to_host


def _shrunk(zeta, cost, rho, beta, rows=False, group_size=1):
    """Iteration.shrink on a stand-in iteration holding only what it reads."""
    iteration = SimpleNamespace(xp=np, s=SimpleNamespace(cost=cost, rho=rho), beta=beta, rows=rows,
                                program=SimpleNamespace(group_size=group_size))
    return Iteration.shrink(iteration, zeta)


def test_the_weights_prox_is_the_soft_threshold_and_meets_its_optimality_condition():
    """u = prox of sum c_ij |u_ij| / (rho_j beta) at zeta: rho_j beta (zeta - u) is in c_ij d|u| entrywise."""
    rng = np.random.default_rng(0)
    zeta, cost, rho, beta = rng.standard_normal((6, 4)), rng.random((6, 4)), rng.random(4) + 0.5, 2.0
    u = _shrunk(zeta, cost, rho, beta)
    pull = rho[None, :] * beta * (zeta - u)
    np.testing.assert_allclose(pull[u != 0], (cost * np.sign(u))[u != 0], rtol=1e-12)
    assert np.all(np.abs(pull[u == 0]) <= cost[u == 0] + 1e-12) and np.any(u == 0) and np.any(u != 0)


@pytest.mark.parametrize("group_size", [1, 3])
def test_the_rows_prox_is_the_group_soft_threshold_and_meets_its_optimality_condition(group_size):
    """u_g = prox of c_g ||u_g||_F / (rho beta) at zeta_g (rho the same for every neuron): rho beta (zeta_g - u_g)
    = c_g u_g / ||u_g|| where u_g != 0, and ||rho beta zeta_g|| <= c_g where u_g = 0."""
    rng = np.random.default_rng(1)
    groups, M, beta = 4, 3, 1.5
    zeta = rng.standard_normal((groups * group_size, M)) * np.repeat([0.1, 1.0, 0.2, 3.0], group_size)[:, None]
    group_cost = np.array([0.5, 0.5, 2.0, 1.0])
    cost = np.repeat(group_cost, group_size)[:, None] * np.ones((1, M))
    rho = np.full(M, 0.8)
    u = _shrunk(zeta, cost, rho, beta, rows=True, group_size=group_size)
    for g in range(groups):
        rows = slice(g * group_size, (g + 1) * group_size)
        pull, norm = 0.8 * beta * (zeta[rows] - u[rows]), np.linalg.norm(u[rows])
        if norm > 0:
            np.testing.assert_allclose(pull, group_cost[g] * u[rows] / norm, rtol=1e-10, atol=1e-12)
        else:
            assert np.linalg.norm(0.8 * beta * zeta[rows]) <= group_cost[g] + 1e-12
    assert any(np.linalg.norm(u[g * group_size:(g + 1) * group_size]) == 0 for g in range(groups))


def test_the_working_set_keeps_the_positions_asked_for_in_every_array():
    rng = np.random.default_rng(2)
    M, N, P = 5, 3, 4
    arrays = {name: rng.standard_normal((M, P)) for name in WorkingSet.ROWS}
    arrays.update({name: rng.standard_normal((N, M)) for name in WorkingSet.COLUMNS})
    arrays.update({name: rng.standard_normal(M) for name in WorkingSet.VECTORS})
    arrays.update({name: np.arange(M) * 10 for name in WorkingSet.HOST})
    arrays.update(ceiling=rng.standard_normal((M, P)), eps=0.5, X_widest=None)
    s = WorkingSet(**{name: value.copy() if isinstance(value, np.ndarray) else value for name, value in arrays.items()})
    keep = np.array([True, False, True, True, False])
    s.keep(np, keep, np.flatnonzero(keep))
    for name in WorkingSet.ROWS + WorkingSet.VECTORS + WorkingSet.HOST + ("ceiling",):
        np.testing.assert_array_equal(getattr(s, name), arrays[name][keep], err_msg=name)
    for name in WorkingSet.COLUMNS:
        np.testing.assert_array_equal(getattr(s, name), arrays[name][:, keep], err_msg=name)
    assert s.eps == 0.5 and s.X_widest is None  # a layer's float and an absent array stay as they are


def test_a_checks_flags_and_summary_come_back_in_one_transfer():
    import solvers

    be = backend("cpu")
    flags = (np.array([True, False, True]), np.array([False, False, True]))
    before = solvers.device_to_host_transfers()
    host_flags, summary = to_host(be, flags, np.array([1.5, -2.0]))
    assert solvers.device_to_host_transfers() - before == 1
    np.testing.assert_array_equal(host_flags, np.stack(flags))
    np.testing.assert_array_equal(summary, [1.5, -2.0])
