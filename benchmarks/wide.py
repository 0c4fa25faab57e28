"""A wide layer on the CPU: VGG-11's classifier.0 (Linear 25,088 -> 4,096, then ReLU) at P = 1,000 samples.

The layer's N x N Gram matrix alone would take 4.7 GiB in float64; the ADMM factors the P x P one instead
(solvers/factor.py) and solves the neurons in chunks that fit its memory limit. Stand-in data (no downloads): X
is ReLU(standard normal) 25,088 x 1,000 plus the bias row (full rank, the hard case: VGG's real inputs at 32 x 32
pixels repeat each of 512 channels 49 times), W the trained-looking N(0, 0.01) of torchvision's VGG init, per-neuron
budgets g = 0.05, float32 iterations. Three runs, each in a fresh process so that its peak resident memory is its own:
- "whole layer": all 4,096 neurons under memory_limit (1.5 GiB: the solver's working memory; the layer's W, its
  input and the returned U, N x M float64 each, come on top), each chunk stopped after a few iterations: the
  memory plan and peak memory of the full layer, and seconds per iteration of all its neurons;
- "neurons to the end": the first 64 neurons solved to convergence (every neuron's program is independent, and
  all 4,096 are solved in chunks the same way): iterations, status, weights kept, seconds;
- "vgg11_bn": the layer itself, torchvision's vgg11_bn with random weights (seeded) trimmed by nettrim.trim with
  layers="classifier.0" on 1,000 random 32 x 32 images (P = 1,000), everything else by default: its input repeats
  each of 512 channels 49 times (adaptive average pooling of a 1 x 1 map), and solvers/copies.py solves the
  copies as one input. torchvision is a test dependency (tests/torchvision_models.py imports it here).
Writes benchmarks/results/wide.json and wide.md.

    python -m benchmarks.wide            # about 10 minutes on 2 cores
    python -m benchmarks.wide --quick    # a minute: N = 3,000, P = 200; vgg11_bn on 64 images, 100 iterations
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
FULL = {"N": 25_089, "P": 1_000, "M": 4_096, "subset": 64, "whole_iterations": 10, "memory_limit": 1.5 * 2**30,
        "vgg_images": 1_000, "vgg_options": {}}
QUICK = {"N": 3_001, "P": 200, "M": 256, "subset": 16, "whole_iterations": 10, "memory_limit": 0.05 * 2**30,
         "vgg_images": 64, "vgg_options": {"max_iter": 100}}


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


def _run_vgg(sizes: dict, results) -> None:
    """In a fresh process: trim vgg11_bn's classifier.0 (module docstring), put the measures on `results`."""
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from torchvision_models import models

    import nettrim
    from solvers.copies import find_copies

    torch.manual_seed(0)
    model = models().vgg11_bn(weights=None, num_classes=10).eval()
    images = torch.randn(sizes["vgg_images"], 3, 32, 32)
    start = time.perf_counter()
    _, report = nettrim.trim(model, images, layers="classifier.0", max_samples=1_000, progress=False,
                             **sizes["vgg_options"])
    seconds = time.perf_counter() - start
    with torch.no_grad():
        inputs = torch.flatten(model.avgpool(model.features(images)), 1).double().numpy().T
    row, copies = report.layers[0], find_copies(inputs)
    results.put({
        "images": sizes["vgg_images"], "samples": row.samples, "seconds": round(seconds, 2),
        "solve_seconds": round(row.seconds, 2), "iterations": row.iterations, "status": row.status,
        "kept": round(row.nonzeros_after / row.nonzeros_before, 4), "fit_ratio": round(row.fit_ratio, 4),
        "distinct_inputs": int(len(inputs) if copies is None else copies.first.size), "inputs": int(inputs.shape[0]),
        "peak_memory_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)})


def measure(sizes: dict, neurons: int | None, options: dict) -> dict:
    """_run (or with neurons=None, _run_vgg) in a fresh (spawned) process, which imports it as benchmarks.wide
    however this file was loaded."""
    from benchmarks import wide

    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    target, args = (wide._run_vgg, (sizes,)) if neurons is None else (wide._run, (sizes, neurons, options))
    process = context.Process(target=target, args=(*args, results))
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
        "", f"All {whole['neurons']:,} neurons: {per_iteration:.1f} s per iteration on this machine.", "",
        vgg_markdown(report["vgg11_bn"])])


def vgg_markdown(vgg: dict) -> str:
    return "\n".join([
        f"vgg11_bn's classifier.0 itself (random weights, {vgg['images']:,} images of 32 x 32, "
        f"P = {vgg['samples']:,}): {vgg['distinct_inputs']:,} of its {vgg['inputs']:,} inputs are distinct, and "
        "the trim solves those.", "",
        "| trim | seconds (solve) | iterations | status | kept | fit/eps | peak memory |",
        "|---|---:|---:|---|---:|---:|---:|",
        f"| `nettrim.trim(vgg11_bn, images, layers=\"classifier.0\", max_samples=1000)` | {vgg['seconds']} "
        f"({vgg['solve_seconds']}) | {vgg['iterations']} | {vgg['status']} | {vgg['kept']:.1%} | "
        f"{vgg['fit_ratio']} | {vgg['peak_memory_gib']} GiB |"])


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
        "neurons_to_the_end": measure(sizes, sizes["subset"], {}),
        "vgg11_bn": measure(sizes, None, {})}
    write_results(args.out, report, markdown(report))
    return report


if __name__ == "__main__":
    main()
