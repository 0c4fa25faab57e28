"""A linear program over its sufficient statistics (solvers/sufficient.py): the same optimum as over its samples."""

import numpy as np
import pytest

from instances import random_problem
from solvers import LayerProblem, solve
from solvers.sufficient import compress, compressible


def _wide_linear(per_neuron: bool, g: float = 0.4, seed: int = 0) -> LayerProblem:
    """N = 30 inputs (one always 0, the bias row of ones), P = 600 samples, noisy targets off X's row space."""
    problem = random_problem(seed, N=30, P=600, M=6, activation="linear", per_neuron=per_neuron, g=g)
    X = problem.X.copy()
    X[4] = 0.0
    rng = np.random.default_rng(seed)
    Y = problem.Y + 0.3 * rng.standard_normal(problem.Y.shape)
    eps = g * (np.linalg.norm(Y, axis=1) if per_neuron else np.linalg.norm(Y))
    return LayerProblem(X, Y, eps, "linear", original_weights=problem.original_weights)


@pytest.mark.parametrize("per_neuron", [True, False])
def test_the_compressed_program_has_the_same_fit_and_optimum(per_neuron):
    problem = _wide_linear(per_neuron)
    compressed, statistics = compress(problem)
    assert compressed.shape[1] == statistics.rank <= problem.shape[0] - 1  # the zero row adds no rank
    assert not compressed.X[4].any()
    rng = np.random.default_rng(1)
    U = rng.standard_normal(problem.original_weights.shape)
    full = np.linalg.norm(U.T @ problem.X - problem.Y, axis=1) ** 2
    short = np.linalg.norm(U.T @ compressed.X - compressed.Y, axis=1) ** 2
    eps_full, eps_short = np.asarray(problem.eps) ** 2, np.asarray(compressed.eps) ** 2
    # ||u^T X - y||^2 - eps^2 is the same on both sides (up to the margin the compressed budget aims inside by)
    if per_neuron:
        np.testing.assert_allclose(full - eps_full, short - eps_short, rtol=1e-9, atol=1e-9 * full.max())
    else:
        assert full.sum() - eps_full == pytest.approx(short.sum() - eps_short, rel=1e-9, abs=1e-9 * full.sum())
    oracle = solve(problem, backend="cvxpy")
    assert oracle.info["compressed_samples"] == [600, statistics.rank]
    assert oracle.status == "optimal"
    from solvers.reference import solve_reference
    on_samples = solve_reference(problem)  # Clarabel on the 600 samples themselves
    assert oracle.objective == pytest.approx(on_samples.objective, rel=1e-6)
    admm = solve(problem, gap_tol=1e-3)
    assert admm.status == "optimal" and admm.info["compressed_samples"] == [600, statistics.rank]
    assert np.all(np.asarray(admm.fit) <= np.asarray(problem.eps) * (1 + 1e-12))
    assert on_samples.objective * (1 - 1e-6) <= admm.objective <= on_samples.objective * (1 + 2e-3)


@pytest.mark.parametrize("per_neuron", [True, False])
def test_a_budget_below_the_unreachable_part_is_certified_infeasible(per_neuron):
    problem = _wide_linear(per_neuron)
    small = LayerProblem(problem.X, problem.Y, 0.01 * np.asarray(problem.eps) if per_neuron else 0.01 * problem.eps,
                         "linear")
    for backend in ("admm", "cvxpy"):
        result = solve(small, backend=backend)
        assert result.status == "infeasible", (backend, result.message)


def test_only_linear_programs_with_many_samples_are_compressed():
    assert compressible(_wide_linear(True))
    assert not compressible(random_problem(0, N=30, P=600, activation="relu"))
    assert not compressible(random_problem(0, N=30, P=50, activation="linear"))
    low_rank = _wide_linear(True)
    X = np.tile(low_rank.X[:, :20], 30)  # 600 samples, but each of 20 repeated
    assert compress(LayerProblem(X, low_rank.Y, low_rank.eps, "linear")) is not None


def test_a_compressed_program_solves_on_the_gpu_stand_in_as_on_the_host(strict_device):
    """The statistics are formed on the host before the solve moves the program to its device: on the CPU
    stand-in for a GPU (no implicit transfers) the compressed program ends with the host's weights."""
    problem = _wide_linear(per_neuron=True)
    on_device, on_host = solve(problem, device=strict_device), solve(problem)
    assert on_device.info["compressed_samples"] == on_host.info["compressed_samples"] == [600, 29]
    assert on_device.status == on_host.status == "optimal"
    np.testing.assert_allclose(on_device.U, on_host.U, rtol=1e-6, atol=1e-9)
