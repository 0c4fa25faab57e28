"""ADMM behaviour beyond matching the oracle: guarantees, honesty of status, special neurons, options."""

import tracemalloc

import numpy as np
import pytest

from instances import random_problem
from solvers import PUBLISHED_OPTIONS, LayerProblem, arrays, relative_budget, solve, within_budget
from solvers.memory import MemoryLimitError, memory_limit_for


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("per_neuron", [False, True])
def test_proposition_1_holds_for_the_returned_weights(seed, per_neuron):
    """||relu(U^T X) - Y|| <= eps for the returned U (V = 0): the promise a user gets on every layer."""
    problem = random_problem(100 + seed, N=30, P=400, M=10, per_neuron=per_neuron, g=0.05 + 0.05 * seed)
    result = solve(problem, dtype="float32")
    assert result.status == "optimal", result.message
    response = np.maximum(result.U.T @ problem.X, 0)
    axis = 1 if per_neuron else None
    assert np.all(np.linalg.norm(response - problem.Y, axis=axis) <= np.asarray(problem.eps) * (1 + 1e-3))
    assert result.nonzeros < problem.original_weights.size  # and it is sparser than a dense layer


def test_dead_neuron_gives_an_all_zero_column_silently():
    problem = random_problem(5, per_neuron=True, dead_neurons=2)
    assert np.all(problem.Y[:2] == 0)
    result = solve(problem)
    assert result.status == "optimal"
    assert np.all(result.U[:, :2] == 0)
    assert result.info["screened_neurons"] >= 2
    assert result.info["neuron_status"] == {"optimal": 5} | {status: 0 for status in result.info["neuron_status"]
                                                              if status != "optimal"}  # the screened counted


def test_all_neurons_trivial_returns_zeros():
    X = np.random.default_rng(0).standard_normal((5, 20))
    Y = np.zeros((3, 20))
    result = solve(LayerProblem(X, Y, 0.0))
    assert result.status == "optimal" and not result.U.any()
    result = solve(LayerProblem(X, Y, np.zeros(3)))
    assert result.status == "optimal" and not result.U.any()


@pytest.mark.parametrize("per_neuron", [False, True])
def test_infeasible_budget_is_reported_as_infeasible(per_neuron):
    """A linear target outside the row space of X cannot be met with eps = 0."""
    rng = np.random.default_rng(1)
    X = rng.standard_normal((5, 200))
    Y = rng.standard_normal((3, 200))
    eps = np.zeros(3) if per_neuron else 0.0
    problem = LayerProblem(X, Y, eps, activation="linear")
    result = solve(problem, max_iter=5000)
    assert result.status == "infeasible", result.message
    reference = solve(problem, backend="cvxpy")
    assert reference.status == "infeasible"


def test_status_max_iter_is_honest():
    problem = random_problem(7, N=30, P=300, M=6, g=0.05)
    result = solve(problem, max_iter=3)
    assert result.status == "max_iter"
    assert result.iterations == 3
    assert "stopped before converging" in result.message


def test_published_configuration_runs_and_reports_its_feasibility_honestly():
    problem = random_problem(8, N=30, P=300, M=6, g=0.1)
    result = solve(problem, **PUBLISHED_OPTIONS, max_iter=20000)
    assert result.info["dtype"] == "float64"
    assert result.iterations < 20000, "the step rule stops this small instance"
    ok = within_budget(problem, result, fit_rtol=1e-9, violation_tol=1e-5)
    assert result.status == ("optimal" if ok else "inaccurate"), result.message
    ours = solve(problem)
    assert ours.status == "optimal"


@pytest.mark.parametrize("option", [dict(warm_start=False), dict(relaxation=1.0), dict(adaptive_rho=False),
                                    dict(equilibrate=True), dict(check_every=1)])
def test_options_reach_the_same_optimum(option):
    problem = random_problem(11, N=20, P=200, M=4, per_neuron=True)
    baseline = solve(problem)
    varied = solve(problem, **option, max_iter=20000)
    assert varied.status == "optimal", varied.message
    assert varied.objective == pytest.approx(baseline.objective, rel=5e-3)


def test_callback_sees_progress_and_can_stop():
    problem = random_problem(12, N=20, P=200, M=4)
    seen = []
    result = solve(problem, callback=lambda iteration, info: seen.append((iteration, info)) or len(seen) >= 2)
    assert len(seen) == 2 and {"primal", "dual", "active"} <= set(seen[0][1])
    assert result.status == "max_iter" and result.info["stopped_by_callback"]


def test_relative_budget_zero_recovers_the_generating_weights():
    """eps = 0 with many samples: exact recovery of a sparse neuron (Aghasi et al., NIPS 2017, Theorem 3)."""
    rng = np.random.default_rng(4)
    N, P = 40, 400
    X = rng.standard_normal((N, P))
    w = np.zeros(N)
    w[rng.choice(N, 4, replace=False)] = rng.standard_normal(4)
    Y = np.maximum(w @ X, 0)[None]
    result = solve(LayerProblem(X, Y, relative_budget(Y, 0.0)), rel_tol=1e-6, max_iter=20000)
    np.testing.assert_allclose(result.U[:, 0], w, atol=1e-4)


def test_bad_options_are_refused_even_when_every_neuron_is_screened():
    X = np.random.default_rng(0).standard_normal((5, 20))
    problem = LayerProblem(X, np.zeros((3, 20)), np.zeros(3))
    with pytest.raises(ValueError, match="dtype must be"):
        solve(problem, dtype="float16")
    with pytest.raises(ValueError, match="device must be"):
        solve(problem, device="tpu")
    with pytest.raises(TypeError, match="max_iters"):
        solve(problem, max_iters=10)
    with pytest.raises(ValueError, match="gap_tol"):
        solve(problem, gap_tol=-1e-3)
    with pytest.raises(ValueError, match="gap_patience"):
        solve(problem, gap_patience=0)


def test_a_memory_limit_solves_the_neurons_in_chunks_that_fit():
    problem = random_problem(5, N=30, P=300, M=14, per_neuron=True, cascade=True)
    options = {"dtype": "float64", "anderson": 0}
    whole = solve(problem, **options)
    chunked = solve(problem, **options, memory_limit=memory_limit_for(problem, 5, anderson=0))
    assert chunked.info["chunks"] == 3 and len(chunked.info["blocks"]) == 3
    assert "sample_blocks" not in chunked.info  # X fits: it is on the device whole
    assert np.abs(chunked.U - whole.U).max() <= 1e-9 * np.abs(whole.U).max()
    assert chunked.status == whole.status


@pytest.mark.parametrize("per_neuron", [True, False])
def test_a_layer_whose_x_leaves_no_room_streams_its_samples(per_neuron):
    """X (N x P) bigger than the limit allows next to the neurons: it stays on the host and every product moves
    it in blocks of samples; the iteration (repairs included) is the same up to rounding."""
    problem = random_problem(7, N=100, P=300, M=8, per_neuron=per_neuron, cascade=True, density=0.2)
    together = 1 if per_neuron else 8  # the neurons that must be solved at once
    limit = memory_limit_for(problem, 4 if per_neuron else 8, streamed=True)
    assert limit < memory_limit_for(problem, together)  # X on the device leaves no room for them
    whole = solve(problem)
    streamed = solve(problem, memory_limit=limit)
    assert streamed.info["sample_blocks"] > 1
    assert streamed.info.get("chunks", 1) == (2 if per_neuron else 1)
    assert streamed.status == whole.status == "optimal"
    assert np.abs(streamed.U - whole.U).max() <= 1e-9 * np.abs(whole.U).max()
    assert streamed.iterations == whole.iterations
    assert streamed.info["repaired"] == whole.info["repaired"]


def test_a_streamed_layer_matches_clarabel():
    """With room for 4 neurons or for one, the repairs gather only their violated samples from the blocks, so
    every neuron is repaired either way."""
    problem = random_problem(8, N=100, P=300, M=6, per_neuron=True, cascade=True)
    reference = solve(problem, backend="cvxpy", solver="CLARABEL")
    for dtype, neurons in [("float64", 4), ("float32", 4), ("float64", 1), ("float32", 1)]:
        limit = memory_limit_for(problem, neurons, dtype, streamed=True)
        streamed = solve(problem, dtype=dtype, memory_limit=limit)
        assert streamed.info["sample_blocks"] > 1 and streamed.info["chunks"] == -(-6 // neurons)
        assert streamed.info["repaired"] == 6
        assert streamed.status == "optimal", streamed.message
        assert streamed.objective == pytest.approx(reference.objective, rel=5e-3)
        assert np.all(np.asarray(streamed.fit) <= np.asarray(problem.eps) * (1 + 1e-9))
        assert streamed.max_violation <= 1e-5 * np.abs(problem.Y).max()


def test_the_default_memory_limit_is_what_the_host_has_available(monkeypatch):
    """On the CPU too the plan takes 90% of the memory the system reports available: with room for 5 neurons
    the layer is solved in chunks, with room for none it is refused before anything large is allocated."""
    problem = random_problem(5, N=30, P=300, M=14, per_neuron=True, cascade=True)
    options = {"dtype": "float64", "anderson": 0}
    monkeypatch.setattr(arrays, "available_host_memory", lambda: None)
    whole = solve(problem, **options)
    assert "chunks" not in whole.info
    monkeypatch.setattr(arrays, "available_host_memory", lambda: memory_limit_for(problem, 5, anderson=0) / 0.9)
    chunked = solve(problem, **options)
    assert chunked.info["chunks"] == 3
    assert np.abs(chunked.U - whole.U).max() <= 1e-9 * np.abs(whole.U).max()
    monkeypatch.setattr(arrays, "available_host_memory", lambda: 1000)
    with pytest.raises(MemoryLimitError, match=r"0.00 GiB \(90% of the free memory\) holds not even one neuron"):
        solve(problem, **options)


def test_a_memory_limit_too_small_for_the_layer_says_what_to_change():
    problem = random_problem(5, N=30, P=300, M=14, per_neuron=True)
    with pytest.raises(ValueError, match=r"memory_limit: .* holds not even one neuron .*max_samples"):
        solve(problem, memory_limit=memory_limit_for(problem, 0, streamed=True))
    coupled = random_problem(6, N=30, P=300, M=14, per_neuron=False)
    with pytest.raises(ValueError, match="cannot be chunked.*max_samples.*per-neuron budgets"):
        solve(coupled, memory_limit=memory_limit_for(coupled, 10, streamed=True))
    with pytest.raises(ValueError, match="memory_limit must be a positive"):
        solve(problem, memory_limit=-1)


def test_tf32_needs_cuda():
    problem = random_problem(5, N=10, P=50, M=3, per_neuron=True)
    with pytest.raises(ValueError, match="tf32=True needs device='cuda'"):
        solve(problem, tf32=True)
    assert solve(problem).info["tf32"] is False


def test_rho_starts_the_threshold_at_the_warm_starts_scale():
    """1/(rho beta) = THRESHOLD_OVER_MEAN_WEIGHT mean|D W0| cost_unit from the trained weights, mean|D U| cost_unit
    from `initial` (a previous round's solution), in the equilibrated variables D U, with cost_unit the median over
    X's rows of their mean |x| over nonzero entries; `rho` given is kept. Scaling the data by s scales 1/(rho beta)
    by s^2."""
    from solvers.admm import THRESHOLD_OVER_MEAN_WEIGHT, iteration_constants

    problem = random_problem(3, N=20, P=200, M=6, per_neuron=True)
    row_norms = np.linalg.norm(problem.X, axis=1)[:, None]
    unit = np.median([np.abs(row[row != 0]).mean() for row in problem.X])
    constants = iteration_constants(problem)
    assert constants["cost_unit"] == pytest.approx(unit)
    threshold = 1 / (constants["rho"] * constants["beta"])
    assert threshold == pytest.approx(THRESHOLD_OVER_MEAN_WEIGHT * np.abs(problem.original_weights * row_norms).mean()
                                      * unit)
    initial = np.where(np.abs(problem.original_weights) > 0.5, problem.original_weights, 0.0)
    constants = iteration_constants(problem, initial=initial)
    assert 1 / (constants["rho"] * constants["beta"]) == pytest.approx(np.abs(initial * row_norms).mean() * unit)
    assert iteration_constants(problem, rho=2.5)["rho"] == 2.5
    scaled = iteration_constants(LayerProblem(problem.X * 255, problem.Y * 255, problem.eps * 255,
                                              original_weights=problem.original_weights))
    assert 1 / (scaled["rho"] * scaled["beta"]) == pytest.approx(threshold * 255**2)


@pytest.mark.parametrize(("N", "P", "M"), [(4000, 800, 20), (300, 5000, 100)])
def test_a_solve_stays_within_the_memory_limit_it_planned_for(N, P, M):
    """Everything the solve allocates (traced: NumPy's arrays are) fits in memory_limit_for(all M neurons at
    once): X and its factorization, the neurons' arrays, and the batches of repairs (a wide layer on the samples
    side; many samples)."""
    rng = np.random.default_rng(0)
    X = np.vstack([np.maximum(rng.standard_normal((N - 1, P)), 0), np.ones((1, P))])
    W = rng.normal(0, 0.05, (N, M))
    Y = np.maximum(W.T @ X, 0)
    problem = LayerProblem(X, Y, relative_budget(Y, 0.05, per_neuron=True), original_weights=W)
    limit = memory_limit_for(problem, M, "float64")
    tracemalloc.start()
    try:
        result = solve(problem, dtype="float64", max_iter=300, memory_limit=limit)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "chunks" not in result.info and result.info["repaired"] > 0
    assert peak <= limit, f"{peak / 2**20:.1f} MiB > {limit / 2**20:.1f} MiB"


@pytest.mark.parametrize("per_neuron", [True, False])
def test_the_margin_the_iteration_aims_inside_the_budget_costs_no_l1(per_neuron):
    """The iteration aims inside eps by 2 rel_tol ||y||; a neuron converged there whose l1 is not proven within
    gap_tol goes on at eps itself. At rel_tol = 5e-3 (a margin of 20% of eps at g = 0.05) it ended "inaccurate",
    1.3% above the oracle's l1."""
    problem = random_problem(0, N=30, P=150, M=6, activation="linear", per_neuron=per_neuron, g=0.05)
    reference = solve(problem, backend="cvxpy")
    result = solve(problem, rel_tol=5e-3)
    assert result.status == "optimal" and within_budget(problem, result, 1e-9, 1e-5)
    assert result.objective == pytest.approx(reference.objective, rel=5e-3)


def test_aiming_at_the_budget_on_the_device(device):
    problem = random_problem(0, N=30, P=150, M=6, activation="linear", per_neuron=True, g=0.05)
    reference = solve(problem, backend="cvxpy")
    result = solve(problem, rel_tol=5e-3, device=device)
    assert result.status == "optimal" and result.objective == pytest.approx(reference.objective, rel=5e-3)


def test_anderson_stops_accelerating_a_neuron_whose_residual_does_not_halve():
    """The progress guard (anderson.py): the map zeta -> zeta + c (a residual that never shrinks) for neuron 0,
    and a contraction for neuron 1; after STALLED_STEPS plain steps only neuron 1 is still accelerated, and a
    disabled neuron's point is the plain image."""
    from solvers.anderson import STALLED_STEPS, Anderson
    from solvers.arrays import backend

    accelerator = Anderson(backend("cpu"), memory=3)
    zeta_z, zeta_w = np.ones((2, 4)), np.ones((5, 2))
    for step in range(4 * (STALLED_STEPS + 2)):
        image_z = np.vstack([zeta_z[0] + 1.0, 0.5 * zeta_z[1]])
        image_w = np.stack([zeta_w[:, 0] + 1.0, 0.5 * zeta_w[:, 1]], axis=1)
        zeta_z, zeta_w = accelerator.step(image_z, image_w, accelerate=step % 4 != 3)
    assert accelerator.enabled.tolist() == [False, True]
    np.testing.assert_array_equal(zeta_z[0], image_z[0])




def test_anderson_updates_the_memorys_products_with_the_residual_as_measuring_them_would():
    """Each step measures only the newest difference's products with the memory (anderson.py): dG^T g, carried
    from step to step, stays what measuring it afresh gives, through rejected steps, cleared neurons and the
    memory's slots wrapping around."""
    from solvers.anderson import Anderson
    from solvers.arrays import backend

    rng = np.random.default_rng(3)
    mixing = np.eye(6) + 0.1 * rng.standard_normal((6, 6))

    def image(zeta_z, zeta_w):  # a contraction with noise: some accelerated steps are rejected
        return 0.97 * zeta_z @ mixing.T + rng.standard_normal(zeta_z.shape), 0.9 * zeta_w + 1.0

    accelerator = Anderson(backend("cpu"), memory=3)
    point = (rng.standard_normal((4, 6)), rng.standard_normal((5, 4)))
    rejected = 0
    for step in range(20):
        point = accelerator.step(*image(*point), accelerate=step % 5 != 4)
        if step == 9:
            accelerator.clear(np.array([True, False, False, True]))
        if accelerator.projections is not None:
            g_z, g_wT = accelerator.previous[0], accelerator.previous[1]
            measured = (accelerator.dG[0] @ g_z[:, :, None] + accelerator.dG[1] @ g_wT[:, :, None])[:, :, 0]
            scale = np.abs(measured).max()
            np.testing.assert_allclose(accelerator.projections, measured, rtol=1e-10, atol=1e-10 * scale)
        rejected += accelerator.fresh is not None and bool(accelerator.fresh.any())
    assert accelerator.slot > 3 * accelerator.memory and rejected


def test_anderson_forgets_a_rescaled_neuron_only():
    """A neuron whose rho changed (rescale: its memory is cleared and the difference across the change is not
    recorded) takes the plain image at its next step, while the other neuron's point is exactly the one it would
    have had without the change: the neurons' memories are independent."""
    from solvers.anderson import Anderson
    from solvers.arrays import backend

    angle = 0.3
    rotation = np.eye(4)
    rotation[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]

    def image(zeta_z, zeta_w):  # a rotating contraction per neuron: Anderson with memory 3 does not solve it at once
        return 0.95 * zeta_z @ rotation.T + np.array([[1.0], [2.0]]), 0.8 * zeta_w + np.array([[3.0, -1.0]])

    changed, untouched = Anderson(backend("cpu"), memory=3), Anderson(backend("cpu"), memory=3)
    point = reference = (np.zeros((2, 4)), np.zeros((5, 2)))
    for step in range(6):
        if step == 5:
            changed.rescale(np.array([True, False]), point)
            plain_z, plain_w = image(*point)
        point = changed.step(*image(*point), accelerate=True)
        reference = untouched.step(*image(*reference), accelerate=True)
    np.testing.assert_array_equal(point[0][0], plain_z[0])
    np.testing.assert_array_equal(point[1][:, 0], plain_w[:, 0])
    assert not np.allclose(reference[0][0], plain_z[0])  # without the change neuron 0 was extrapolated
    np.testing.assert_array_equal(point[0][1], reference[0][1])
    np.testing.assert_array_equal(point[1][:, 1], reference[1][:, 1])


@pytest.mark.parametrize("cascade", [False, True])
def test_a_tightened_neuron_gets_the_users_program_back(cascade):
    """A restoration round lowers a neuron's internal budget and its whole Omega^c bound (constraints.tighten);
    back_to_the_program gives the chosen neurons the user's budget and bound again, and only them."""
    from solvers import constraints
    from solvers.arrays import backend
    from solvers.constraints import Program
    from solvers.iteration import WorkingSet

    rng = np.random.default_rng(0)
    Y = np.maximum(rng.standard_normal((3, 20)), 0.0)
    omega = Y > 0
    user_upper = -rng.random((3, 20)) if cascade else 0.0
    program = Program(Y=Y, omega=omega, upper=user_upper, eps=np.array([1.0, 2.0, 3.0]), l1_weights=None)
    on_omega = omega.astype(float)
    s = WorkingSet(neurons=np.arange(3), rounds_left=np.full(3, 4), tight=np.zeros(3, dtype=bool),
                   inside_margin=np.ones(3, dtype=bool), Y=Y, on_omega=on_omega, tol_factor=np.ones(3),
                   eps=np.array([[0.9], [1.8], [2.7]]), ceiling=constraints.ceiling(np, on_omega, user_upper))
    user_ceiling = np.where(omega, np.inf, np.broadcast_to(user_upper, (3, 20)))
    np.testing.assert_array_equal(s.ceiling, user_ceiling)
    constraints.tighten(backend("cpu"), s, np.array([0, 2]), np.array([0.1, 0.2]), np.array([0.05, 0.01]),
                        program, rounds=4)
    assert s.tight.tolist() == [True, False, True] and s.rounds_left.tolist() == [3, 4, 3]
    assert s.tol_factor.tolist() == [1.0, 1.0, 1.0]  # the tolerances from the third round on only
    tightened_ceiling = np.array(s.ceiling)
    np.testing.assert_array_equal(tightened_ceiling[2], user_ceiling[2] - 0.02)  # twice the violation; inf on Omega
    constraints.back_to_the_program(backend("cpu"), s, np.array([0]), program)
    assert s.tight.tolist() == [False, False, True] and not s.inside_margin[0]
    np.testing.assert_array_equal(s.eps[:, 0], [1.0, 1.8, 2.7 - 0.4])
    np.testing.assert_array_equal(s.ceiling[0], user_ceiling[0])
    np.testing.assert_array_equal(s.ceiling[1:], tightened_ceiling[1:])


@pytest.mark.parametrize("coupled", [False, True])
def test_the_third_restoration_round_tightens_the_tolerances_too(coupled):
    """constraints.tighten: from the third of 4 rounds on, the stopping tolerances of the neurons retried shrink
    by 0.3 (all the neurons' when they are coupled)."""
    from solvers import constraints
    from solvers.arrays import backend
    from solvers.constraints import Program
    from solvers.iteration import WorkingSet

    s = WorkingSet(neurons=np.arange(3), rounds_left=np.full(3, 4), tight=np.zeros(3, dtype=bool),
                   tol_factor=np.ones(3), eps=0.9 if coupled else np.ones((3, 1)), Y=np.zeros((3, 5)))
    retried = np.array([0])
    program = Program(Y=s.Y, omega=np.ones((3, 5), dtype=bool), upper=0.0, eps=0.9 if coupled else np.ones(3),
                      l1_weights=None, relu=False, coupled=coupled)
    for round_ in range(3):
        constraints.tighten(backend("cpu"), s, retried, np.array([0.01]), np.zeros(1), program, rounds=4)
        expected = 1.0 if round_ < 2 else 0.3
        np.testing.assert_allclose(s.tol_factor, [expected, expected if coupled else 1.0, expected if coupled else 1.0])
