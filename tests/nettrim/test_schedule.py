"""Trimming on executors: with the same neuron blocks, local process pools, thread pools and a Dask LocalCluster
give the in-process result; blocks solve the layer the whole layer does; a worker that raises or dies is
reported with its layer and block, and the model is untouched."""

from __future__ import annotations

import multiprocessing
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_limits

import nettrim.schedule
from instances import random_problem
from nettrim import trim
from nettrim.schedule import BlockError, Scheduler, SharedArray, available_cores
from networks import images, inputs, mlp, small_cnn
from solvers import AdmmSettings, solve
from solvers.blocks import block_options, neuron_blocks
from solvers.result import merge_results

BLOCKS = 8  # neurons per block; the serial runs use the same blocks, solved one after another


def _max_relative_difference(first: torch.nn.Module, second: torch.nn.Module) -> float:
    worst = 0.0
    for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True):
        if a.is_floating_point():
            worst = max(worst, float((a - b).abs().max() / a.abs().max().clamp_min(1e-300)))
    return worst


@pytest.fixture(scope="module")
def model_and_data():
    return mlp(seed=3, sizes=(12, 40, 24, 4)), inputs(400)


def _worker_arithmetic(workers: int):
    """The BLAS thread count of each of `workers` pool workers, for the in-process run they are compared with:
    products summed in another order round differently, and the stopping decisions can carry that further."""
    return threadpool_limits(limits=max(1, available_cores() // workers))


@pytest.fixture(scope="module")
def serial_cascade(model_and_data):
    model, x = model_and_data
    with _worker_arithmetic(2):
        return trim(model, x, epsilon=0.1, progress=False, block_size=BLOCKS)


def _solve_in_blocks(problem, count, options):
    blocks = neuron_blocks(problem, count)
    assert blocks[0].start == 0 and blocks[-1].stop == problem.shape[2]
    shared = block_options(problem, "admm", options)
    return merge_results(problem, blocks, [solve(problem.neurons(block), **shared) for block in blocks], 1.0)


@pytest.mark.parametrize("count", [1, 3, 7])
def test_blocks_follow_the_whole_layers_iteration(count):
    # without Anderson acceleration the iteration is stable, so rounding-level differences stay rounding-level
    problem = random_problem(5, N=30, P=300, M=14, per_neuron=True, cascade=True)
    options = {"dtype": "float64", "anderson": 0}
    whole = solve(problem, **options)
    merged = _solve_in_blocks(problem, count, options)
    assert np.abs(merged.U - whole.U).max() <= 1e-9 * np.abs(whole.U).max()
    assert merged.status == whole.status and merged.info["neuron_status"] == whole.info["neuron_status"]


@pytest.mark.parametrize("seed", [5, 6, 7])
def test_accelerated_blocks_reach_the_same_optimum(seed):
    # Anderson steps amplify rounding differences to the solver's tolerance; both meet it at the same optimum
    problem = random_problem(seed, N=30, P=300, M=14, per_neuron=True, cascade=True)
    whole, merged = solve(problem), _solve_in_blocks(problem, 3, {})
    assert merged.objective == pytest.approx(whole.objective, rel=1e-3)
    assert problem.columns_within_budget(merged.U).all()


def test_a_layer_budget_stays_one_block():
    problem = random_problem(6, N=20, P=200, M=9, per_neuron=False)
    assert neuron_blocks(problem, 4) == [slice(0, 9)]
    with pytest.raises(ValueError, match="eps"):
        problem.neurons(slice(0, 3))


def test_process_pool_equals_the_serial_cascade(model_and_data, serial_cascade):
    model, x = model_and_data
    pooled, report = trim(model, x, epsilon=0.1, progress=False, workers=2, block_size=BLOCKS)
    assert _max_relative_difference(serial_cascade[0], pooled) <= 1e-6
    assert [layer.nonzeros_after for layer in report.layers] == [
        layer.nonzeros_after for layer in serial_cascade[1].layers]


@pytest.fixture(scope="module")
def in_process_parallel(model_and_data):
    model, x = model_and_data
    return trim(model, x, epsilon=0.1, mode="parallel", progress=False)


def _dask(options):
    distributed = pytest.importorskip("distributed")
    with (distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
          as cluster, distributed.Client(cluster) as client):
        return trim(*options.pop("data"), executor=client, **options)


@pytest.mark.parametrize("executor", [dict(workers=1), dict(workers=2), dict(workers=2, block_size=BLOCKS),
                                      dict(workers=1, block_size=BLOCKS), "dask"])
def test_every_executor_keeps_the_l1_fit_and_sparsity_of_the_in_process_trim(model_and_data, in_process_parallel,
                                                                             executor):
    """What every executor promises (docs/scale.md), nothing matched: workers with cores // workers BLAS threads
    each against this process with all of them, blocks of neurons against whole layers. Float rounding differs
    and the ADMM may stop at another point of a flat optimal face, so single weights may differ; in parallel mode
    each layer's program is the same in both runs, so each ends "optimal" in both, within its budget, with an l1
    within the gap tolerance of the other's (both are certified within it of the optimum), and with nonzeros
    within 1% of its weights."""
    options = dict(epsilon=0.1, mode="parallel", progress=False)
    if executor == "dask":
        pooled, pooled_report = _dask({**options, "data": model_and_data})
    else:
        pooled, pooled_report = trim(*model_and_data, **options, **executor)
    here, here_report = in_process_parallel
    gap_tol = AdmmSettings().gap_tol
    layers = [module for module in here.modules() if isinstance(module, torch.nn.Linear)]
    others = [module for module in pooled.modules() if isinstance(module, torch.nn.Linear)]
    for row, other, layer, twin in zip(here_report.layers, pooled_report.layers, layers, others, strict=True):
        assert row.status == other.status == "optimal"
        assert max(row.fit_ratio, other.fit_ratio) <= 1 + 1e-3
        l1, l1_other = (sum(float(p.detach().abs().sum()) for p in m.parameters()) for m in (layer, twin))
        assert abs(l1 - l1_other) <= gap_tol * max(l1, l1_other)
        assert abs(row.nonzeros_after - other.nonzeros_after) <= 0.01 * row.nonzeros_before


def test_thread_pool_in_parallel_mode_with_reweighting(model_and_data):
    model, x = model_and_data
    options = dict(epsilon=0.1, mode="parallel", reweight=1, progress=False, block_size=BLOCKS)
    serial, serial_report = trim(model, x, **options)
    with ThreadPoolExecutor(3) as executor:
        threaded, report = trim(model, x, **options, executor=executor)
    assert _max_relative_difference(serial, threaded) <= 1e-6
    assert [layer.name for layer in report.layers] == [layer.name for layer in serial_report.layers]


def test_conv_model_on_a_process_pool():
    model, x = small_cnn(seed=2), images(40)
    with _worker_arithmetic(2):
        serial, _ = trim(model, x, epsilon=0.1, progress=False, block_size=2)
    pooled, _ = trim(model, x, epsilon=0.1, progress=False, workers=2, block_size=2)
    assert _max_relative_difference(serial, pooled) <= 1e-6


class RecordingPool(ProcessPoolExecutor):
    """A process pool that records what each task received."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.inputs = []

    def submit(self, fn, *args, **kwargs):
        self.inputs.append(args[0])
        return super().submit(fn, *args, **kwargs)


def test_a_process_pool_receives_each_layer_input_once_as_a_shared_file(model_and_data, serial_cascade):
    model, x = model_and_data
    with RecordingPool(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        pooled, _ = trim(model, x, epsilon=0.1, progress=False, executor=pool, block_size=BLOCKS)
    assert all(isinstance(handle, SharedArray) for handle in pool.inputs)
    assert len(pool.inputs) == 5 + 3 + 1  # blocks of 8 neurons: 40, 24 and 4 neurons
    assert len({handle.path for handle in pool.inputs}) == 3  # one file per layer, shared by its blocks
    assert _max_relative_difference(serial_cascade[0], pooled) <= 1e-6


def test_dask_local_cluster_equals_serial(model_and_data, serial_cascade):
    distributed = pytest.importorskip("distributed")
    model, x = model_and_data
    with (distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
          as cluster, distributed.Client(cluster) as client):
        by_client, _ = trim(model, x, epsilon=0.1, progress=False, executor=client, block_size=BLOCKS)
        by_executor, _ = trim(model, x, epsilon=0.1, progress=False, executor=client.get_executor(),
                              block_size=BLOCKS)
    assert _max_relative_difference(serial_cascade[0], by_client) <= 1e-6
    assert _max_relative_difference(serial_cascade[0], by_executor) <= 1e-6


def test_a_worker_that_raises_names_the_layer_and_block(model_and_data, monkeypatch):
    model, x = model_and_data
    before = {name: value.clone() for name, value in model.state_dict().items()}
    real = nettrim.schedule.solve_block

    def fails_on_one_block(X, piece, *args):
        Y = piece["Y"]
        if Y.shape[0] == 8 and np.allclose(Y, fails_on_one_block.target):
            raise FloatingPointError("injected failure")
        return real(X, piece, *args)

    with torch.no_grad():
        W = model[2].weight.double()
        hidden = torch.relu(model[0](x))
        fails_on_one_block.target = torch.relu(hidden @ W.T + model[2].bias)[:, 8:16].T.numpy()
    monkeypatch.setattr(nettrim.schedule, "solve_block", fails_on_one_block)
    with ThreadPoolExecutor(2) as executor, pytest.raises(BlockError) as caught:
        trim(model, x, epsilon=0.1, mode="parallel", progress=False, executor=executor, block_size=8,
             inplace=True)
    message = str(caught.value)
    assert "layer '2', neurons 8:16 (block 2 of 3)" in message and "FloatingPointError: injected failure" in message
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())


def test_a_killed_worker_is_reported_and_the_model_untouched(model_and_data):
    model, x = model_and_data
    before = {name: value.clone() for name, value in model.state_dict().items()}
    never_checks = {"check_every": 10**9, "max_iter": 10**9}  # iterates until the worker is killed
    known = set(multiprocessing.active_children())

    def kill_a_worker():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            workers = [child for child in multiprocessing.active_children() if child not in known]
            if workers:
                time.sleep(3.0)  # let it import and start solving
                workers[0].kill()
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_a_worker, daemon=True)
    killer.start()
    died = r"layer '0', neurons \d+:\d+ \(block \d of 2\): a worker process solving this layer died"
    with pytest.raises(BlockError, match=died):
        trim(model, x, epsilon=0.1, progress=False, workers=2, block_size=20, inplace=True,
             solver_options=never_checks)
    killer.join()
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())
    deadline = time.monotonic() + 10  # the other worker was terminated, not left solving forever
    while any(child not in known for child in multiprocessing.active_children()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [child for child in multiprocessing.active_children() if child not in known]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"workers": 0}, "workers must be a positive int"),
    ({"workers": 2, "executor": ThreadPoolExecutor(1)}, "pass one of them"),
    ({"block_size": 0}, "block_size must be a positive int"),
    ({"executor": object()}, "executor must be a concurrent.futures.Executor"),
])
def test_bad_scheduling_options_name_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Scheduler(**kwargs)


def test_a_fork_based_pool_starts_its_workers_before_any_layer_thread():
    """Workers forked from a layer thread while another one is inside BLAS inherit its held locks and hang (the
    reliability issue's deadlock): the scheduler starts a fork-based pool's workers from the calling thread, at
    once, before parallel mode starts its layer threads; a parallel trim on such a pool finishes."""
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork")) as pool:
        assert not pool._processes
        with Scheduler(executor=pool):
            assert len(pool._processes) == 2
        model, calibration = mlp(3, sizes=(12, 24, 16, 4)), inputs(400, seed=3)
        trimmed, report = trim(model, calibration, mode="parallel", executor=pool)
        assert all(layer.status == "optimal" for layer in report.layers)


def test_local_workers_ignore_ctrl_c():
    """Ctrl-C reaches the whole process group: the workers ignore it (no traceback from each of them), and the
    main process stops them (the CLI then says "interrupted" on one line)."""
    import signal

    with Scheduler(workers=1) as scheduler:
        assert scheduler.executor.submit(signal.getsignal, signal.SIGINT).result() == signal.SIG_IGN
