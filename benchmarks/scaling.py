"""Scaling: the ADMM's time against P, N and M on the CPU; a whole trim in this process against 1 and 2 local
worker processes; a layer under a memory_limit (the GPU runs are benchmarks/gpu.py's).

One run, same process, same data:
- sweeps: seeded synthetic ReLU layers (X Gaussian with a bias row, W Gaussian with half its entries zero,
  per-neuron budgets g = 0.05), one of P, N, M varied around (N, P, M) = (200, 4000, 100);
- workers: LeNet-300-100 (the demo's model, cached) trimmed whole in cascade and parallel mode on P seeded
  training images: in this process as one piece per layer, then in blocks of 150 neurons (layer 1 in two
  blocks) in this process and with workers=1 and 2; each blocked run's largest weight difference to the
  in-process blocked run (relative to that run's largest weight), and the weights kept;
- memory: a synthetic layer solved whole, then under a memory_limit that holds a fifth of its neurons next to X
  (neuron chunks), then under one that holds as many with X kept on the host and moved in blocks of samples at
  every product (sample chunking): the cost of streaming X, here on the CPU where nothing actually moves;
Writes benchmarks/results/scaling.json and scaling.md.

    python -m benchmarks.scaling            # about 3 minutes on 2 cores
    python -m benchmarks.scaling --quick    # seconds
"""

from __future__ import annotations

import platform
import sys
import time
from functools import partial
from pathlib import Path

if __package__ in (None, ""):  # run as a script: this file's folder would shadow the `solvers` package
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import numpy as np  # noqa: E402
import torch  # noqa: E402

import nettrim  # noqa: E402
import solvers  # noqa: E402
from benchmarks.results_files import benchmark_parser, write_results  # noqa: E402
from nettrim.schedule import available_cores  # noqa: E402
from nettrim.zoo import mnist_inputs, trained  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
FULL = {"base": (200, 4000, 100), "P": [1000, 2000, 4000, 8000], "N": [100, 200, 400, 800], "M": [25, 50, 100, 200],
        "samples": 5000, "epochs": 10, "workers": [1, 2], "block_size": 150, "memory": (800, 8000, 100)}
QUICK = {"base": (40, 400, 20), "P": [200, 400], "N": [20, 40], "M": [10, 20], "samples": 300, "epochs": 1,
         "workers": [2], "block_size": 150, "memory": (100, 400, 20)}


def synthetic_layer(N: int, P: int, M: int, seed: int = 0, g: float = 0.05) -> solvers.LayerProblem:
    rng = np.random.default_rng(seed)
    X = np.vstack([rng.standard_normal((N - 1, P)), np.ones((1, P))])
    W = rng.standard_normal((N, M)) * (rng.random((N, M)) < 0.5) / np.sqrt(N)
    Y = np.maximum(W.T @ X, 0)
    return solvers.LayerProblem(X, Y, solvers.relative_budget(Y, g, per_neuron=True), original_weights=W)


def sweeps(config: dict) -> list[dict]:
    rows = []
    for varied in ("P", "N", "M"):
        for value in config[varied]:
            N, P, M = config["base"]
            N, P, M = (value if varied == "N" else N), (value if varied == "P" else P), (value if varied == "M" else M)
            problem = synthetic_layer(N, P, M)
            start = time.perf_counter()
            result = solvers.solve(problem, dtype="float32")
            rows.append({"varied": varied, "N": N, "P": P, "M": M, "seconds": round(time.perf_counter() - start, 3),
                         "iterations": result.iterations, "status": result.status,
                         "kept": result.nonzeros / result.U.size,
                         "within_budget": bool(problem.columns_within_budget(result.U).all())})
            print(f"sweep {varied}: N={N} P={P} M={M}: {rows[-1]['seconds']} s", flush=True)
    return rows


def memory(config: dict) -> list[dict]:
    N, P, M = config["memory"]
    problem = synthetic_layer(N, P, M)
    limit_for = partial(solvers.memory.memory_limit_for, problem, M // 5, "float32")
    limits = {"whole": None, "neuron chunks": limit_for(), "neuron chunks, X streamed": limit_for(streamed=True)}
    rows = []
    for name, limit in limits.items():
        start = time.perf_counter()
        result = solvers.solve(problem, dtype="float32", memory_limit=limit)
        rows.append({"run": name, "N": N, "P": P, "M": M, "memory_limit": limit,
                     "seconds": round(time.perf_counter() - start, 3), "chunks": result.info.get("chunks", 1),
                     "sample_blocks": result.info.get("sample_blocks", 1), "repaired": result.info["repaired"],
                     "iterations": result.iterations, "status": result.status, "l1": result.objective,
                     "within_budget": bool(problem.columns_within_budget(result.U).all())})
        print(f"memory: {name}: {rows[-1]['seconds']} s", flush=True)
    return rows


def _largest_difference(reference: torch.nn.Module, other: torch.nn.Module) -> float:
    return max(float((a - b).abs().max() / a.abs().max()) for a, b in
               zip(reference.state_dict().values(), other.state_dict().values(), strict=True))


def workers(config: dict) -> list[dict]:
    model = trained("lenet_300_100", epochs=config["epochs"])
    images, _ = mnist_inputs("lenet_300_100", "train")
    chosen = np.sort(np.random.default_rng(0).choice(len(images), config["samples"], replace=False))
    calibration = images[chosen]
    rows = []
    for mode in ("cascade", "parallel"):
        reference = None
        for count, block_size in [(None, None), (None, config["block_size"]),
                                  *[(count, config["block_size"]) for count in config["workers"]]]:
            start = time.perf_counter()
            trimmed, report = nettrim.trim(model, calibration, epsilon=0.1, mode=mode, workers=count,
                                           block_size=block_size, progress=False)
            seconds = time.perf_counter() - start
            if block_size is not None and reference is None:
                reference = trimmed
            rows.append({"mode": mode, "workers": count or 0, "block_size": block_size, "P": config["samples"],
                         "seconds": round(seconds, 2), "kept": report.kept,
                         "status": [layer.status for layer in report.layers],
                         "difference_to_same_blocks_in_process": (None if block_size is None else
                                                                  _largest_difference(reference, trimmed))})
            print(f"{mode}, workers={count}, block_size={block_size}: {seconds:.1f} s", flush=True)
    return rows


def markdown(report: dict) -> str:
    cores = report["machine"]["cores"]
    lines = [f"ADMM on synthetic ReLU layers (float32, per-neuron g = 0.05), {cores} CPU cores:", "",
             "| varied | N | P | M | seconds | iterations | kept | within budget |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for row in report["sweeps"]:
        lines.append(f"| {row['varied']} | {row['N']} | {row['P']} | {row['M']} | {row['seconds']:.2f} | "
                     f"{row['iterations']} | {100 * row['kept']:.1f}% | {row['within_budget']} |")
    lines += ["", f"LeNet-300-100 trimmed whole (g = 0.1, P = {report['workers'][0]['P']}), in this process and on "
              "local worker processes:", "",
              "| mode | where | block size | seconds | speed-up | weights kept | difference to in-process blocks |",
              "|---|---|---:|---:|---:|---:|---:|"]
    serial = {row["mode"]: row["seconds"] for row in report["workers"] if row["block_size"] is None}
    for row in report["workers"]:
        where = f"{row['workers']} workers" if row["workers"] else "in process"
        difference = row["difference_to_same_blocks_in_process"]
        lines.append(f"| {row['mode']} | {where} | {row['block_size'] or 'whole layer'} | {row['seconds']:.1f} | "
                     f"{serial[row['mode']] / row['seconds']:.2f}x | {100 * row['kept']:.1f}% | "
                     f"{'-' if difference is None else f'{difference:.1e}'} |")
    memory_rows = report["memory"]
    first = memory_rows[0]
    lines += ["", f"One synthetic layer (N = {first['N']}, P = {first['P']}, M = {first['M']}, float32) under a "
              "memory_limit, on the CPU:", "",
              "| run | chunks | sample blocks | seconds | time / chunks | repaired | l1 / whole | within budget |",
              "|---|---:|---:|---:|---:|---:|---:|---|"]
    chunked = memory_rows[1]["seconds"]
    for row in memory_rows:
        lines.append(f"| {row['run']} | {row['chunks']} | {row['sample_blocks']} | {row['seconds']:.2f} | "
                     f"{row['seconds'] / chunked:.2f} | {row['repaired']} | {row['l1'] / first['l1']:.5f} | "
                     f"{row['within_budget']} |")
    lines += ["", "The GPU runs are benchmarks/gpu.py's."]
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = benchmark_parser(__doc__, "small sweeps, a briefly trained model, P = 300", RESULTS / "scaling.json")
    args = parser.parse_args(argv)
    config = QUICK if args.quick else FULL
    report = {"machine": {"cores": available_cores(), "python": platform.python_version(),
                          "numpy": np.__version__, "torch": torch.__version__},
              "config": config, "sweeps": sweeps(config), "memory": memory(config), "workers": workers(config)}
    write_results(args.out, report, markdown(report))
    return report


if __name__ == "__main__":
    main()
