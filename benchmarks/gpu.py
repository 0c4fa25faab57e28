"""The GPU path: what the solver costs a device, measured on any machine, and on an NVIDIA GPU its speed.

One run, same process, same data (layer 1 of LeNet-300-100: 784 pixels + bias -> 300 ReLU neurons, per-neuron
budgets g = 0.05, float32 iterations):
- cpu proxies, on every machine: the layer solved on array_api_strict's "device1" (the CPU stand-in for a GPU)
  with every array operation the solver's code issues counted (namespace functions and operators: a stand-in
  for kernel launches), per bulk iteration and per check, and the device-to-host transfers per check (each a
  synchronization on a GPU); then the same layer with NumPy, timed;
- gpu, only where solvers.backend("cuda") finds one (CuPy, or torch): the iteration's two matrix products alone
  (float32 and TF32: the floor), the layer with the ADMM (float32 and TF32) and with solvers.PUBLISHED_OPTIONS on
  the same GPU, and LeNet-300-100 and LeNet-5 trimmed whole in cascade mode, all at P = 55,000.
Writes benchmarks/results/gpu.json and gpu.md.

    python -m benchmarks.gpu            # P = 2,000 for the proxies (about 2 minutes on 2 cores) + the GPU runs
    python -m benchmarks.gpu --quick    # seconds: P = 300, no GPU runs
"""

from __future__ import annotations

import contextlib
import inspect
import platform
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: this file's folder would shadow the `solvers` package
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import numpy as np  # noqa: E402

import nettrim  # noqa: E402
import solvers  # noqa: E402
from benchmarks.results_files import benchmark_parser, write_results  # noqa: E402
from benchmarks.solvers import layer_one_problem  # noqa: E402
from nettrim.zoo import mnist_inputs, trained  # noqa: E402
from solvers.iteration import Iteration  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
OPERATORS = ("__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__", "__truediv__", "__rtruediv__",
             "__pow__", "__matmul__", "__neg__", "__abs__", "__gt__", "__ge__", "__lt__", "__le__", "__eq__",
             "__ne__", "__and__", "__or__", "__invert__", "__getitem__", "__setitem__")


@contextlib.contextmanager
def counted_operations():
    """Count every array_api_strict function call and array operator issued from the solvers package's code
    (not those the namespace makes internally); yields the counter {"operations": n}."""
    import array_api_strict
    from array_api_strict._array_object import Array

    counter = {"operations": 0}
    patched = []

    def count(owner, name):
        original = getattr(owner, name)

        def counted(*args, **kwargs):
            if sys._getframe(1).f_globals.get("__name__", "").startswith("solvers"):
                counter["operations"] += 1
            return original(*args, **kwargs)

        setattr(owner, name, counted)
        patched.append((owner, name, original))

    for module in (array_api_strict, array_api_strict.linalg):
        for name, value in vars(module).items():
            if inspect.isfunction(value) and not name.startswith("_"):
                count(module, name)
    for name in OPERATORS:
        count(Array, name)
    try:
        yield counter
    finally:
        for owner, name, original in reversed(patched):
            setattr(owner, name, original)


def cpu_proxies(problem: solvers.LayerProblem) -> dict:
    """Operations per bulk iteration and per check, and device-to-host transfers per check, on the strict device;
    the NumPy solve's seconds and iterations."""
    import array_api_strict

    per_step, per_check, transfers = [], [], []
    step, check = Iteration.step, Iteration.check

    with counted_operations() as counter:
        def counted_step(self, is_check):
            before = counter["operations"]
            result = step(self, is_check)
            (per_check if is_check else per_step).append(counter["operations"] - before)
            return result

        def counted_check(self, iteration, previous, callback):
            before, moved = counter["operations"], solvers.device_to_host_transfers()
            result = check(self, iteration, previous, callback)
            per_check[-1] += counter["operations"] - before
            transfers.append(solvers.device_to_host_transfers() - moved)
            return result

        Iteration.step, Iteration.check = counted_step, counted_check
        try:
            start = time.perf_counter()
            strict = solvers.solve(problem, device=array_api_strict.Device("device1"), dtype="float32")
            strict_seconds = time.perf_counter() - start
        finally:
            Iteration.step, Iteration.check = step, check
    start = time.perf_counter()
    host = solvers.solve(problem, dtype="float32")
    return {"operations_per_iteration": float(np.mean(per_step)), "operations_per_check": float(np.mean(per_check)),
            "transfers_per_check_mean": float(np.mean(transfers)), "transfers_per_check_max": int(np.max(transfers)),
            "checks": len(transfers), "strict_iterations": strict.iterations, "strict_status": strict.status,
            "strict_seconds": round(strict_seconds, 2), "numpy_seconds": round(time.perf_counter() - start, 2),
            "numpy_iterations": host.iterations, "numpy_status": host.status, "repaired": host.info["repaired"],
            "l1_strict_over_numpy": strict.objective / host.objective}


def _timed(be, run) -> float:
    """Seconds of run() on the device, synchronized before and after."""
    def synchronize():
        be.scalars(be.xp.sum(be.xp.zeros(1, device=be.device)))

    synchronize()
    start = time.perf_counter()
    run()
    synchronize()
    return time.perf_counter() - start


def gpu(samples: int = 55_000) -> dict | None:
    """The GPU targets of issue 15, measured only where a CUDA device is found."""
    try:
        be = solvers.backend("cuda")
    except (ValueError, ImportError):
        return None
    problem = layer_one_problem(samples, 0.05, 0, 4)
    results = {"device": be.name, "P": samples}
    N, P, M = problem.shape
    X = be.asarray(problem.X, "float32")
    Z = be.asarray(np.zeros((M, P)), "float32")
    U = be.asarray(np.zeros((N, M)), "float32")
    for tf32 in (False, True):
        with be.tensor_float32("float32", tf32):
            X @ Z.T, U.T @ X  # warm
            seconds = _timed(be, lambda: [(X @ Z.T, U.T @ X) for _ in range(20)]) / 20
        results[f"two_products_ms_{'tf32' if tf32 else 'float32'}"] = round(1000 * seconds, 3)
    solvers.solve(layer_one_problem(500, 0.05, 0, 4), device="cuda", dtype="float32")  # context and kernels warm
    for run, options in (("admm_float32", {}), ("admm_tf32", {"tf32": True}),
                         ("published", solvers.PUBLISHED_OPTIONS)):
        start = time.perf_counter()
        result = solvers.solve(problem, device="cuda", dtype="float32", **options)
        results[run] = {"seconds": round(time.perf_counter() - start, 3), "status": result.status,
                        "iterations": result.iterations, "l1": result.objective,
                        "neurons_within_budget": int(problem.columns_within_budget(result.U).sum())}
    results["speedup_over_published"] = results["published"]["seconds"] / results["admm_float32"]["seconds"]
    for name in ("lenet_300_100", "lenet5"):
        model = trained(name, epochs=10)
        images, _ = mnist_inputs(name, "train")
        start = time.perf_counter()
        _, report = nettrim.trim(model, images[:samples], device="cuda", progress=False, max_samples=samples)
        results[name] = {"seconds": round(time.perf_counter() - start, 3), "kept": report.kept,
                         "statuses": [layer.status for layer in report.layers]}
    return results


def markdown(report: dict) -> str:
    proxies, P = report["cpu_proxies"], report["P"]
    lines = [f"Layer 1 of LeNet-300-100 (N = 785, M = 300, P = {P:,}, g = 0.05, float32) on array_api_strict's "
             "device1, the CPU stand-in for a GPU, and with NumPy:", "",
             "| operations / iteration | operations / check | transfers / check (mean, max) | checks | iterations "
             "| NumPy seconds | status |", "|---:|---:|---|---:|---:|---:|---|",
             f"| {proxies['operations_per_iteration']:.0f} | {proxies['operations_per_check']:.0f} "
             f"| {proxies['transfers_per_check_mean']:.1f}, {proxies['transfers_per_check_max']} "
             f"| {proxies['checks']} | {proxies['numpy_iterations']} | {proxies['numpy_seconds']:.1f} "
             f"| {proxies['numpy_status']} |", "",
             "Operations are the array functions and operators the solver's code issues (a stand-in for kernel "
             "launches); transfers are device-to-host copies (each a synchronization on a GPU)."]
    g = report.get("gpu")
    if not g:
        return "\n".join(lines + ["", "No CUDA device on this machine: the GPU runs were not measured."])
    lines += ["", f"On the GPU ({g['device']}), P = {g['P']:,}: the two products alone "
              f"{g['two_products_ms_float32']} ms (float32), {g['two_products_ms_tf32']} ms (TF32).", "",
              "| run | seconds | status | iterations | neurons within budget |", "|---|---:|---|---:|---:|"]
    for run in ("admm_float32", "admm_tf32", "published"):
        row = g[run]
        lines.append(f"| {run} | {row['seconds']} | {row['status']} | {row['iterations']} "
                     f"| {row['neurons_within_budget']} |")
    lines += ["", f"ADMM {g['speedup_over_published']:.1f}x faster than the published configuration; cascade trims: "
              f"LeNet-300-100 {g['lenet_300_100']['seconds']} s, LeNet-5 {g['lenet5']['seconds']} s."]
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = benchmark_parser(__doc__, "P = 300 for the proxies, no GPU runs", RESULTS / "gpu.json")
    parser.add_argument("--samples", type=int, default=2_000, help="P of the CPU proxies' layer")
    args = parser.parse_args(argv)
    P = 300 if args.quick else args.samples
    report = {"machine": {"python": platform.python_version(), "numpy": np.__version__}, "P": P,
              "cpu_proxies": cpu_proxies(layer_one_problem(P, 0.05, 0, 4)),
              "gpu": None if args.quick else gpu()}
    write_results(args.out, report, markdown(report))
    return report


if __name__ == "__main__":
    main()
