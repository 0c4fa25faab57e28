"""A wide layer on the CPU: VGG-11's classifier.0 (Linear 25,088 -> 4,096, then ReLU) at P = 1,000 samples.

The layer's N x N Gram matrix alone would take 4.7 GiB in float64; the ADMM factors the P x P one instead
(solvers/factor.py) and solves the neurons in chunks that fit its memory limit. Stand-in data (no downloads): X
is ReLU(standard normal) 25,088 x 1,000 plus the bias row (full rank, the hard case: VGG's real inputs at 32 x 32
pixels repeat each of 512 channels 49 times), W the trained-looking N(0, 0.01) of torchvision's VGG init, per-neuron
budgets g = 0.05, float32 iterations. Two runs, each in a fresh process so that its peak resident memory is its own:
- "whole layer": all 4,096 neurons under memory_limit (1.5 GiB: the solver's working memory; the layer's W, its
  input and the returned U, N x M float64 each, come on top), each chunk stopped after a few iterations: the
  memory plan and peak memory of the full layer, and seconds per iteration of all its neurons;
- "neurons to the end": the first 64 neurons solved to convergence (every neuron's program is independent, and
  all 4,096 are solved in chunks the same way): iterations, status, weights kept, seconds.
Writes benchmarks/results/wide.json and wide.md.

    python -m benchmarks.wide            # about 10 minutes on 2 cores
    python -m benchmarks.wide --quick    # seconds: N = 3,000, P = 200
"""

from __future__ import annotations

import multiprocessing
import platform
import resource
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: this file's folder would shadow the `solvers` package
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import numpy as np  # noqa: E402

import solvers  # noqa: E402
from benchmarks.results_files import benchmark_parser, write_results  # noqa: E402
from solvers import LayerProblem, relative_budget  # noqa: E402
from solvers.factor import factored_side  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
FULL = {"N": 25_089, "P": 1_000, "M": 4_096, "subset": 64, "whole_iterations": 10, "memory_limit": 1.5 * 2**30}
QUICK = {"N": 3_001, "P": 200, "M": 256, "subset": 16, "whole_iterations": 10, "memory_limit": 0.05 * 2**30}


def wide_problem(N: int, P: int, M: int, seed: int = 0) -> LayerProblem:
    """The stand-in layer (module docstring): N - 1 ReLU features plus a bias row of ones, M ReLU neurons."""
    rng = np.random.default_rng(seed)
    X = np.maximum(rng.standard_normal((N, P)), 0.0)
    X[-1] = 1.0
    W = rng.normal(0.0, 0.01, (N, M))
    W[-1] = 0.0  # torchvision's VGG starts its biases at 0
    Y = np.maximum(W.T @ X, 0.0)
    return LayerProblem(X, Y, relative_budget(Y, 0.05, per_neuron=True), original_weights=W)


def _run(sizes: dict, neurons: int, options: dict, results) -> None:
    """In a fresh process: solve the first `neurons` neurons, put the measures on `results`."""
    problem = wide_problem(sizes["N"], sizes["P"], sizes["M"])
    if neurons < sizes["M"]:
        problem = problem.neurons(slice(0, neurons))
    start = time.perf_counter()
    result = solvers.solve(problem, dtype="float32", **options)
    seconds = time.perf_counter() - start
    results.put({
        "neurons": neurons, "seconds": round(seconds, 2), "iterations": result.iterations, "status": result.status,
        "neuron_status": result.info.get("neuron_status"), "chunks": result.info.get("chunks", 1),
        "kept": round(float(np.count_nonzero(result.U)) / result.U.size, 4),
        "within_budget": bool(problem.columns_within_budget(result.U, 1e-3, 1e-5).all()),
        "peak_memory_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)})


def measure(sizes: dict, neurons: int, options: dict) -> dict:
    """_run in a fresh (spawned) process, which imports it as benchmarks.wide however this file was loaded."""
    from benchmarks import wide

    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    process = context.Process(target=wide._run, args=(sizes, neurons, options, results))
    process.start()
    outcome = results.get()
    process.join()
    return outcome


def markdown(report: dict) -> str:
    layer, whole, subset = report["layer"], report["whole_layer"], report["neurons_to_the_end"]
    per_iteration = whole["seconds"] / whole["iterations"]
    return "\n".join([
        f"Layer N = {layer['N']:,} (with bias) x M = {layer['M']:,}, P = {layer['P']:,}; U-step factored on the "
        f"{layer['factored_side']} side ({layer['factorization_gib']} GiB; the N x N side would need "
        f"{layer['features_side_gib']} GiB).", "",
        "| run | neurons | memory_limit | chunks | iterations | seconds | status | kept | peak memory |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|",
        f"| whole layer, {whole['iterations']} iterations per chunk | {whole['neurons']:,} | "
        f"{report['memory_limit_gib']} GiB | {whole['chunks']} | {whole['iterations']} | {whole['seconds']} | "
        f"stopped | | {whole['peak_memory_gib']} GiB |",
        f"| neurons to the end | {subset['neurons']} | default | {subset['chunks']} | {subset['iterations']} | "
        f"{subset['seconds']} | {subset['status']} | {subset['kept']:.1%} | {subset['peak_memory_gib']} GiB |",
        "", f"All {whole['neurons']:,} neurons: {per_iteration:.1f} s per iteration on this machine."])


def main(argv=None) -> dict:
    parser = benchmark_parser(__doc__, "a small layer, in seconds", RESULTS / "wide.json")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    N, P = sizes["N"], sizes["P"]
    side = factored_side(N, P)
    report = {
        "machine": {"python": platform.python_version(), "numpy": np.__version__, "cores": multiprocessing.cpu_count()},
        "layer": {"N": N, "P": P, "M": sizes["M"], "factored_side": side,
                  "factorization_gib": round(3 * (P if side == "samples" else N) ** 2 * 8 / 2**30, 3),
                  "features_side_gib": round(3 * N * N * 8 / 2**30, 2)},
        "memory_limit_gib": round(sizes["memory_limit"] / 2**30, 2),
        "whole_layer": measure(sizes, sizes["M"], {"memory_limit": sizes["memory_limit"],
                                                   "max_iter": sizes["whole_iterations"]}),
        "neurons_to_the_end": measure(sizes, sizes["subset"], {})}
    write_results(args.out, report, markdown(report))
    return report


if __name__ == "__main__":
    main()
