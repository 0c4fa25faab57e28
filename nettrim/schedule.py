"""Where the layer programs are solved: in this process, on a local process pool (workers=N), or on any
concurrent.futures executor, a Dask cluster's included.

On an executor a layer program becomes tasks, one per block of neurons (per-neuron budgets make the neurons
independent programs: solvers/blocks.py); a layer budget couples them and stays one task. The layer input X,
the one large array every block needs, reaches each worker once per layer: local process pools memory-map it
from a file (the operating system shares its pages between the workers), Dask scatters it to every worker,
thread pools share it in memory; any other executor receives it with each task. A block's own rows (Y, V,
budgets, weights) travel with its task.

A task that raises, or a worker that dies, stops the trim with a BlockError naming the layer and the block;
the other tasks are cancelled and nothing is skipped.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import multiprocessing
import os
import shutil
import tempfile
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, Executor, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

import solvers
from solvers import LayerProblem, LayerResult
from solvers.blocks import block_options, neuron_blocks
from solvers.result import merge_results

#: Automatic splitting keeps blocks at least this many neurons: each block repeats the layer's factorization.
MIN_BLOCK_SIZE = 16
_THREAD_LIMITS = None  # a worker's BLAS thread limits (set by its pool initializer)


class _InlineExecutor(Executor):
    """Runs each task as it is submitted, in this process: the blocks of a serial run."""

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as error:
            future.set_exception(error)
        return future


class BlockError(RuntimeError):
    """A block of a layer failed on a worker (it raised, or its worker died)."""


@dataclass(frozen=True)
class SharedArray:
    """An array in an .npy file that workers memory-map read-only instead of receiving a copy per task."""

    path: str

    def load(self) -> np.ndarray:
        return np.load(self.path, mmap_mode="r")


def solve_block(X, piece: dict, backend: str, options: dict) -> LayerResult:
    """A worker's task: the program of one block of neurons, LayerProblem(X, **piece) (X may be a SharedArray;
    piece: the block's program but X, `without_input`)."""
    if isinstance(X, SharedArray):
        X = X.load()
    return solvers.solve(LayerProblem(X, **piece), backend=backend, **options)


def without_input(problem: LayerProblem) -> dict:
    """The fields of `problem` that LayerProblem takes, X apart (each task gets X as shared, once)."""
    return {field.name: getattr(problem, field.name) for field in dataclasses.fields(problem)
            if field.init and field.name != "X"}


def _limit_threads(threads: int) -> None:
    """Pool initializer: BLAS threads per worker, so that workers x threads <= cores. Ctrl-C reaches the whole
    process group; the workers ignore it (no traceback from each) and the main process stops them."""
    import signal

    from threadpoolctl import threadpool_limits

    signal.signal(signal.SIGINT, signal.SIG_IGN)

    global _THREAD_LIMITS
    _THREAD_LIMITS = threadpool_limits(limits=threads)  # kept alive for the worker's lifetime


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class Scheduler:
    """Solves layer programs in this process (executor=None, workers=None) or as neuron blocks on an executor.

    executor:   any concurrent.futures.Executor, or a dask.distributed Client (its executor is used and X is
                scattered to its workers).
    workers:    N starts a local process pool of N spawned workers, each with cores // N BLAS threads.
    block_size: neurons per block (default: the layer split into one block per worker, blocks of at least
                MIN_BLOCK_SIZE neurons). The blocks are the unit of work and the executor only decides where
                they run, so with the same block_size the result does not depend on the executor (without an
                executor the blocks are solved one after another in this process).
    Use as a context manager: leaving it shuts down the pool it started and deletes the shared files.
    """

    def __init__(self, executor=None, workers: int | None = None, block_size: int | None = None):
        check_scheduling(executor, workers, block_size)
        self.block_size = block_size
        self.client = None
        self._own_pool = None
        self._shared: dict[int, tuple[np.ndarray, object]] = {}
        self._outstanding: set = set()  # submitted futures not yet gathered (cancelled on abort)
        self._lock = threading.Lock()  # layers may be solved from several threads (parallel mode)
        self._directory: Path | None = None
        self._file_numbers = itertools.count()  # file names are never reused, even after release()
        if workers is not None:
            threads = max(1, available_cores() // workers)
            executor = self._own_pool = ProcessPoolExecutor(
                workers, mp_context=multiprocessing.get_context("spawn"), initializer=_limit_threads,
                initargs=(threads,))
            self.parallelism = workers
        elif executor is not None:
            executor, self.client = _dask_executor(executor)
            _start_forked_workers(executor)
            if self.client is not None:
                self.parallelism = max(1, sum(self.client.nthreads().values()))
            else:
                self.parallelism = getattr(executor, "_max_workers", None) or available_cores()
        elif block_size is not None:  # the same blocks as on an executor, one after another
            executor, self.parallelism = _InlineExecutor(), 1
        else:
            self.parallelism = 1
        self.executor = executor

    @property
    def remote(self) -> bool:
        """Do solves run as tasks on an executor (rather than in this process)?"""
        return self.executor is not None and not isinstance(self.executor, _InlineExecutor)

    def __enter__(self) -> Scheduler:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        self.close(abort=error is not None)

    def close(self, abort: bool = False) -> None:
        """Release the shared arrays and shut down the pool this scheduler started (terminating its workers
        when `abort`: after an error or Ctrl-C, running blocks are not waited for)."""
        if abort:
            with self._lock:
                outstanding = list(self._outstanding)
            for future in outstanding:
                future.cancel()
        if self._own_pool is not None:
            if abort:
                for process in list((getattr(self._own_pool, "_processes", None) or {}).values()):
                    process.terminate()
            self._own_pool.shutdown(wait=not abort, cancel_futures=True)
            self._own_pool = None
        self._shared.clear()
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
            self._directory = None

    def release(self, X: np.ndarray) -> None:
        """Forget the shared copy of X (the layer is done)."""
        with self._lock:
            _, handle = self._shared.pop(id(X), (None, None))
        if isinstance(handle, SharedArray):
            Path(handle.path).unlink(missing_ok=True)

    def solve(self, problem: LayerProblem, backend: str, options: dict, label: str, initial=None,
              progress: bool = False) -> LayerResult:
        """Solve one layer program (`label` names it in progress bars and errors); `initial` warm starts it."""
        options = dict(options)
        if initial is not None and backend == "admm":
            options["initial"] = initial
        if self.executor is None:
            return _solve_here(problem, backend, options, label, progress)
        start = time.perf_counter()
        options.pop("callback", None)
        blocks = self._blocks(problem)
        shared_options = block_options(problem, backend, options)
        X = self._share(problem.X)
        futures = {}
        for index, block in enumerate(blocks):
            task_options = dict(shared_options)
            if task_options.get("initial") is not None:
                task_options["initial"] = np.asarray(task_options["initial"])[:, block]
            piece = problem.neurons(block) if len(blocks) > 1 else problem  # one block: the coupled programs too
            futures[self.executor.submit(solve_block, X, without_input(piece), backend, task_options)] = index
        with self._lock:
            self._outstanding.update(futures)
        results = self._gather(futures, blocks, label, progress)
        return merge_results(problem, blocks, results, time.perf_counter() - start)

    def _blocks(self, problem: LayerProblem) -> list[slice]:
        if self.block_size is not None:
            return neuron_blocks(problem, math.ceil(problem.shape[2] / self.block_size))
        return neuron_blocks(problem, self.parallelism, MIN_BLOCK_SIZE)

    def _share(self, X: np.ndarray):
        """X as the workers receive it: a scattered Dask future, a memory-mapped file, or X itself."""
        with self._lock:
            return self._shared[id(X)][1] if id(X) in self._shared else self._share_new(X)

    def _share_new(self, X: np.ndarray):
        if self.client is not None:
            handle = self.client.scatter(X, broadcast=True, hash=False)
        elif isinstance(self.executor, ProcessPoolExecutor):
            if self._directory is None:
                self._directory = Path(tempfile.mkdtemp(prefix="nettrim-"))
            path = self._directory / f"X-{next(self._file_numbers)}.npy"
            np.save(path, X)
            handle = SharedArray(str(path))
        else:  # threads share memory; any other executor gets X with each task
            handle = X
        self._shared[id(X)] = (X, handle)
        return handle

    def _gather(self, futures: dict, blocks: list[slice], label: str, progress: bool) -> list[LayerResult]:
        results: list[LayerResult | None] = [None] * len(blocks)
        pending = set(futures)
        with tqdm(total=len(blocks), desc=label, unit="block", leave=False, disable=not progress) as bar:
            try:
                while pending:
                    done, pending = wait(pending, timeout=1.0, return_when=FIRST_EXCEPTION)
                    for future in done:
                        index = futures[future]
                        results[index] = self._result(future, index, blocks, label)
                        bar.update()
                    if pending and not done:
                        self._check_workers_alive(min(futures[future] for future in pending), blocks, label)
            finally:
                for future in pending:
                    future.cancel()
                with self._lock:
                    self._outstanding.difference_update(futures)
        return results

    def _check_workers_alive(self, index: int, blocks: list[slice], label: str) -> None:
        """Our own pool's workers are watched too: a worker killed at the wrong moment can leave a process pool
        waiting for a result that will never come."""
        processes = (getattr(self._own_pool, "_processes", None) or {}).values() if self._own_pool else ()
        dead = [process.exitcode for process in list(processes) if process.exitcode is not None]
        if dead:
            raise BlockError(f"{_where(label, index, blocks)}: a worker process solving this layer died (exit code "
                             f"{dead[0]}); killed, or out of memory? The model was not changed")

    @staticmethod
    def _result(future, index: int, blocks: list[slice], label: str) -> LayerResult:
        where = _where(label, index, blocks)
        try:
            return future.result()
        except BrokenProcessPool as error:
            raise BlockError(f"{where}: a worker process solving this layer died ({error}); killed, or out of "
                             "memory? The model was not changed") from error
        except Exception as error:
            if type(error).__name__ == "KilledWorker":  # dask: the task's workers kept dying
                raise BlockError(f"{where}: the Dask workers solving it died ({error}); the model was not "
                                 "changed") from error
            raise BlockError(f"{where}: the worker raised {type(error).__name__}: {error}") from error


def _where(label: str, index: int, blocks: list[slice]) -> str:
    block = blocks[index]
    return f"layer {label!r}, neurons {block.start}:{block.stop} (block {index + 1} of {len(blocks)})"


def check_scheduling(executor, workers, block_size) -> None:
    """Refuse bad scheduling arguments (before any work is done) with a ValueError naming them."""
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers must be a positive int (local worker processes), got {workers!r}")
    if workers is not None and executor is not None:
        raise ValueError("workers and executor: pass one of them (workers=N starts a local process pool)")
    if block_size is not None and (isinstance(block_size, bool) or not isinstance(block_size, int)
                                   or block_size < 1):
        raise ValueError(f"block_size must be a positive int (neurons per task), got {block_size!r}")
    if executor is not None and not isinstance(_dask_executor(executor)[0], Executor):
        raise ValueError("executor must be a concurrent.futures.Executor or a dask.distributed Client, "
                         f"got {type(executor).__name__}")


def _start_forked_workers(executor) -> None:
    """Make a fork-based process pool start its workers now, from the calling (main) thread.

    A ProcessPoolExecutor forks its workers at its first submit. In parallel mode that submit comes from a layer
    thread, and a process forked while another thread is inside BLAS inherits that thread's locks held, with no
    thread to release them: its first BLAS call blocks forever, and so does the trim. A fork-based pool starts
    all its workers at once, so one trivial task submitted here, before any layer thread runs, starts them
    all from a thread that holds no BLAS lock. Pools with the spawn or forkserver methods start clean
    processes and need nothing."""
    if not isinstance(executor, ProcessPoolExecutor):
        return
    context = getattr(executor, "_mp_context", None)  # the pool's start method has no public accessor
    method = context.get_start_method() if context is not None else multiprocessing.get_start_method()
    if method == "fork":
        executor.submit(int).result()


def _dask_executor(executor):
    """(executor, client): a dask.distributed Client gives its executor; a Client's executor its client."""
    try:
        from distributed import Client
        from distributed.cfexecutor import ClientExecutor
    except ImportError:
        return executor, None
    if isinstance(executor, Client):
        return executor.get_executor(), executor
    if isinstance(executor, ClientExecutor):
        return executor, executor._client  # the executor has no public accessor for its client
    return executor, None


def _solve_here(problem: LayerProblem, backend: str, options: dict, label: str, progress: bool) -> LayerResult:
    """Solve in this process, with a progress bar of ADMM iterations."""
    bar = None
    if progress and backend == "admm":
        bar = tqdm(total=options.get("max_iter", 10_000), desc=label, unit="it", leave=False)

        def show(iteration, info):
            bar.update(iteration - bar.n)
            bar.set_postfix(active=info["active"], refresh=False)
            return False

        options["callback"] = show
    try:
        return solvers.solve(problem, backend=backend, **options)
    finally:
        if bar is not None:
            bar.close()


__all__ = ["BlockError", "Scheduler", "SharedArray", "available_cores", "check_scheduling", "solve_block",
           "without_input"]
