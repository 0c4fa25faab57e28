"""The solver on the devices CI can run without a GPU: array_api_strict's "device1" (refuses implicit transfers
as CuPy does, and here every implicit synchronization too; conftest.strict_device) and torch's CPU tensors.
Same answers as NumPy, the oracle's optimum, and the transfers of a solve bounded per check."""

from pathlib import Path

import numpy as np
import pytest

from instances import random_problem
from solvers import PUBLISHED_OPTIONS, LayerProblem, device_to_host_transfers, solve
from solvers.memory import memory_limit_for

CASES = [  # (activation, per_neuron, cascade, dead_neurons)
    ("relu", True, False, 0),
    ("relu", False, False, 0),
    ("relu", True, True, 1),
    ("relu", False, True, 0),
    ("linear", True, False, 0),
    ("linear", False, False, 0),
]


def _matches(result, reference, problem, rel=5e-3):
    assert result.status == "optimal", result.message
    assert isinstance(result.U, np.ndarray) and result.U.dtype == np.float64
    assert result.objective == pytest.approx(reference.objective, rel=rel)
    assert np.all(np.asarray(result.fit) <= np.asarray(problem.eps) * (1 + 1e-3))
    assert result.max_violation <= 1e-5 * np.abs(problem.Y).max()


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", CASES, ids=["-".join(map(str, case)) for case in CASES])
def test_the_admm_matches_clarabel_and_numpy_on_the_device(device, case, dtype):
    activation, per_neuron, cascade, dead = case
    problem = random_problem(CASES.index(case), N=24, P=150, M=6, activation=activation, per_neuron=per_neuron,
                             cascade=cascade, dead_neurons=dead)
    reference = solve(problem, backend="cvxpy", solver="CLARABEL")
    on_device = solve(problem, device=device, dtype=dtype)
    _matches(on_device, reference, problem)
    on_host = solve(problem, dtype=dtype)
    assert on_device.objective == pytest.approx(on_host.objective, rel=1e-3)
    assert np.all(on_device.info["l1_lower_bound"] <= np.abs(reference.U).sum(axis=0 if per_neuron else None)
                  * (1 + 1e-6) + 1e-9)
    assert on_device.info["device"] == str(device)


def test_chunks_streamed_samples_and_repairs_on_the_device(device):
    problem = random_problem(8, N=100, P=300, M=6, per_neuron=True, cascade=True)
    reference = solve(problem, backend="cvxpy", solver="CLARABEL")
    chunked = solve(problem, device=device, memory_limit=memory_limit_for(problem, 4))
    assert chunked.info["chunks"] == 2
    _matches(chunked, reference, problem)
    streamed = solve(problem, device=device, dtype="float32",
                     memory_limit=memory_limit_for(problem, 2, "float32", streamed=True))
    assert streamed.info["sample_blocks"] > 1 and streamed.info["chunks"] == 3
    assert streamed.info["repaired"] > 0
    _matches(streamed, reference, problem)


def test_reweighting_screening_and_an_infeasible_budget_on_the_device(device):
    problem = random_problem(5, N=24, P=150, M=5, per_neuron=True, dead_neurons=2)
    reweighted = solve(problem, device=device, reweight=1)
    on_host = solve(problem, reweight=1)
    assert reweighted.info["screened_neurons"] >= 2 and not reweighted.U[:, :2].any()
    assert reweighted.nonzeros == pytest.approx(on_host.nonzeros, rel=0.05)
    assert problem.columns_within_budget(reweighted.U).all()
    rng = np.random.default_rng(1)
    infeasible = LayerProblem(rng.standard_normal((5, 200)), rng.standard_normal((3, 200)), np.zeros(3),
                              activation="linear")
    assert solve(infeasible, device=device, max_iter=5000).status == "infeasible"


def test_the_published_configuration_and_a_callback_on_the_device(device):
    problem = random_problem(8, N=30, P=300, M=6, g=0.1)
    published = solve(problem, device=device, **PUBLISHED_OPTIONS, max_iter=20000)
    on_host = solve(problem, **PUBLISHED_OPTIONS, max_iter=20000)
    assert published.iterations == pytest.approx(on_host.iterations, rel=0.05)
    assert published.status == on_host.status
    seen = []
    stopped = solve(problem, device=device, callback=lambda iteration, info: seen.append(info) or len(seen) >= 2)
    assert stopped.status == "max_iter" and stopped.info["stopped_by_callback"] and len(seen) == 2


def _transfers_per_check(problem, device):
    """The device-to-host transfers between consecutive checks of a solve (counted at each check's callback)."""
    counts = []
    solve(problem, device=device, dtype="float32",
          callback=lambda iteration, info: counts.append(device_to_host_transfers()) and False)
    return np.diff(counts), counts


def test_the_transfers_per_check_do_not_grow_with_the_neurons(strict_device):
    """On the strict device every synchronization is an explicit transfer (anything else raises), so counting
    them counts them all. Per check: one for the flags, one for the candidates' measures, a bounded number for
    a batch of repairs (each round's widest violated set and the CG's looks) and for writing the finished
    neurons out; none per neuron. Eight times the neurons, at the same bound."""
    few = random_problem(31, N=40, P=400, M=6, per_neuron=True, cascade=True, g=0.05)
    many = random_problem(31, N=40, P=400, M=48, per_neuron=True, cascade=True, g=0.05)
    bound = 2 + 4 * (1 + 100 // 8) + 2 + 3  # flags, measures; repair rounds; its acceptance; finalizations
    for problem in (few, many):
        per_check, _ = _transfers_per_check(problem, strict_device)
        assert per_check.max() <= bound
    result = solve(many, device=strict_device, dtype="float32")
    assert result.status == "optimal" and result.info["repaired"] >= 10  # many neurons were repaired at once


def test_the_samples_side_u_step_on_the_device(device):
    """More inputs than samples: the Woodbury U-step (factor.py) on the device gives NumPy's answer."""
    problem = random_problem(61, N=60, P=25, M=4, per_neuron=True, g=0.05, cascade=True)
    on_device = solve(problem, device=device, u_step="samples")
    on_host = solve(problem, u_step="samples")
    assert on_device.status == on_host.status == "optimal"
    assert on_device.objective == pytest.approx(on_host.objective, rel=1e-6)


def test_neurons_accepted_under_the_widened_gap_are_finished_on_their_supports_on_the_device(device):
    """ResNet-20's conv1 at g = 0.05 (test_scale.py): the support finish of the neurons accepted past gap_patience
    gathers their weights and certificates from the device (one transfer for both gap masks); every neuron ends
    "optimal" within budget, as on the host."""
    data = np.load(Path(__file__).parents[1] / "data" / "resnet20_conv1_parallel.npz")
    problem = LayerProblem(data["X"].astype(np.float64), data["Y"], data["eps"], "relu",
                           original_weights=data["W"].astype(np.float64))
    result = solve(problem, device=device)
    assert result.info["neuron_status"]["optimal"] == problem.shape[2], result.info["neuron_status"]
    assert result.info["solved_on_supports"] > 0
    assert problem.columns_within_budget(result.U).all()
    np.testing.assert_array_less(np.abs(result.U).sum(axis=0), data["l1"] * (1 + 5e-3) + 1e-9)
