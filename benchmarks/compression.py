"""Compression on MNIST: Net-Trim (parallel and cascade, plain and reweighted l1) against magnitude pruning at
exactly the same per-layer nonzeros, with and without one masked fine-tuning epoch.

One run, same data, same process: LeNet-300-100 and LeNet-5 (Caffe 20-50-800-500) trained with seeded Adam on
the bundled MNIST (cached); calibration = P seeded training images; for each model, mode, number of
reweighting rounds and g of the grid, one trim; for each trim a magnitude-pruned copy of the original model
with the trimmed model's per-layer nonzeros (the largest |w| of each layer's W, bias row included); each of the
two, as it is and after one masked fine-tuning epoch (Adam, lr 1e-4). Test error on the 10,000 test images.
Writes benchmarks/results/compression.json, a markdown table and a PNG plot of test error against weights kept.

    python -m benchmarks.compression            # the grid below (about an hour on 2 cores)
    python -m benchmarks.compression --quick    # LeNet-300-100 briefly trained, one g: well under 3 minutes
"""

from __future__ import annotations

import copy
import json
import platform
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: this file's folder would shadow the `solvers` package
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import numpy as np  # noqa: E402
import torch  # noqa: E402

import nettrim  # noqa: E402
from benchmarks.results_files import benchmark_parser, write_results  # noqa: E402
from nettrim.layers import select_layers  # noqa: E402
from nettrim.zoo import mnist_inputs, test_error, trained  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
FULL = {"samples": 5000, "finetune_lr": 1e-4, "models": {
    "lenet_300_100": {"epochs": 30, "grid": [0.05, 0.1, 0.2, 0.3], "modes": ["parallel", "cascade"],
                      "reweight": [0, 3]},
    "lenet5": {"epochs": 10, "grid": [0.1, 0.2], "modes": ["cascade"], "reweight": [0, 3]}}}
QUICK = {"samples": 600, "finetune_lr": 1e-4, "models": {
    "lenet_300_100": {"epochs": 2, "grid": [0.1], "modes": ["parallel", "cascade"], "reweight": [0, 1]}}}
TRAINING_LR = {"lenet_300_100": 2e-3, "lenet5": 1e-3}


def magnitude_pruned(model: torch.nn.Module, nonzeros: dict[str, int]) -> torch.nn.Module:
    """A copy of `model` keeping, in each named layer's W (weights and bias as one matrix), its `nonzeros`
    entries of largest magnitude."""
    pruned = copy.deepcopy(model)
    for layer in select_layers(pruned, list(nonzeros)):
        W = layer.weight_matrix()
        keep = nonzeros[layer.name]
        order = np.argsort(np.abs(W), axis=None)[::-1]
        mask = np.zeros(W.size, dtype=bool)
        mask[order[:keep]] = True
        layer.set_weight_matrix(np.where(mask.reshape(W.shape), W, 0.0))
    return pruned


def finetuned(model: torch.nn.Module, images: torch.Tensor, labels: np.ndarray, lr: float, seed: int):
    """One masked fine-tuning epoch on the training set (batches of 128, seeded order)."""
    tuned = copy.deepcopy(model)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    targets = torch.from_numpy(labels)
    loader = [(images[batch], targets[batch]) for batch in order.split(128)]
    return nettrim.finetune(tuned, loader, epochs=1, lr=lr, progress=False)


def evaluate(model, test, train, lr, seed) -> dict:
    return {"test_error": test_error(model, *test),
            "test_error_finetuned": test_error(finetuned(model, *train, lr, seed), *test)}


def run(config: dict, seed: int = 0, progress: bool = False, checkpoint=None, previous: dict | None = None) -> dict:
    """The whole grid; checkpoint(report so far) is called after every trim (a long run keeps what it did).
    Rows of `previous` (an earlier report with the same seed and samples) are reused instead of recomputed."""
    rows, baselines = [], {}
    reusable = {}
    if previous is not None and (previous["seed"], previous["config"]["samples"]) == (seed, config["samples"]):
        for ours, theirs in zip(previous["rows"][::2], previous["rows"][1::2], strict=True):
            reusable[(ours["model"], ours["mode"], ours["reweight"], ours["g"])] = (ours, theirs)
    report = {"config": config, "seed": seed, "baselines": baselines, "rows": rows,
              "machine": {"platform": platform.platform(), "cpus": torch.get_num_threads()}}
    for name, settings in config["models"].items():
        start = time.perf_counter()
        epochs = settings["epochs"]
        model = trained(name, epochs=epochs, lr=TRAINING_LR[name], seed=seed)
        training_seconds = time.perf_counter() - start
        train_images, train_labels = mnist_inputs(name, "train")
        test = mnist_inputs(name, "test")
        chosen = np.sort(np.random.default_rng(seed).choice(len(train_images), config["samples"], replace=False))
        calibration = train_images[torch.from_numpy(chosen)]
        weights = sum(layer.weight_matrix().size for layer in select_layers(model))
        baselines[name] = {"epochs": epochs, "training_seconds": round(training_seconds, 1),
                           "test_error": test_error(model, *test), "weights": weights}
        for mode in settings["modes"]:
            for rounds in settings["reweight"]:
                for g in settings["grid"]:
                    if (name, mode, rounds, g) in reusable:
                        rows.extend(reusable[(name, mode, rounds, g)])
                        continue
                    trimmed, trimming = nettrim.trim(model, calibration, epsilon=g, mode=mode, reweight=rounds,
                                                     max_samples=config["samples"], progress=progress, seed=seed)
                    nonzeros = {row.name: row.nonzeros_after for row in trimming.layers}
                    common = {"model": name, "mode": mode, "reweight": rounds, "g": g,
                              "kept": trimming.nonzeros_after / trimming.weights,
                              "layer_nonzeros": nonzeros}
                    rows.append({**common, "method": "nettrim", "seconds": round(trimming.seconds, 1),
                                 "statuses": [row.status for row in trimming.layers],
                                 **evaluate(trimmed, test, (train_images, train_labels), config["finetune_lr"],
                                            seed)})
                    rows.append({**common, "method": "magnitude", "seconds": 0.0,
                                 **evaluate(magnitude_pruned(model, nonzeros), test, (train_images, train_labels),
                                            config["finetune_lr"], seed)})
                    print(_row_line(rows[-2]), "|", _row_line(rows[-1]), flush=True)
                    if checkpoint is not None:
                        checkpoint(report)
    return report


def _row_line(row: dict) -> str:
    return (f"{row['model']} {row['method']} {row['mode']} rw{row['reweight']} g={row['g']}: "
            f"kept {row['kept']:.1%}, error {row['test_error']:.2%} -> {row['test_error_finetuned']:.2%}")


def markdown(report: dict) -> str:
    lines = []
    for name, base in report["baselines"].items():
        lines += [f"**{name}** (trained {base['epochs']} epochs, test error {base['test_error']:.2%}, "
                  f"{base['weights']:,} weights incl. biases; P = {report['config']['samples']:,} calibration "
                  "images).", "",
                  "| mode | reweight | g | weights kept | Net-Trim error | + fine-tune | magnitude error "
                  "| + fine-tune | Net-Trim seconds |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        rows = [row for row in report["rows"] if row["model"] == name]
        for ours, theirs in zip(rows[::2], rows[1::2], strict=True):
            lines.append(f"| {ours['mode']} | {ours['reweight']} | {ours['g']} | {ours['kept']:.1%} "
                         f"| {ours['test_error']:.2%} | {ours['test_error_finetuned']:.2%} "
                         f"| {theirs['test_error']:.2%} | {theirs['test_error_finetuned']:.2%} "
                         f"| {ours['seconds']:.0f} |")
        lines.append("")
    return "\n".join(lines).rstrip()


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(report["baselines"])
    figure, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
    for axis, name in zip(axes[0], models, strict=True):
        for method, fine, marker in (("nettrim", False, "o"), ("nettrim", True, "s"), ("magnitude", False, "x"),
                                     ("magnitude", True, "+")):
            rows = [row for row in report["rows"] if row["model"] == name and row["method"] == method]
            key = "test_error_finetuned" if fine else "test_error"
            label = f"{'Net-Trim' if method == 'nettrim' else 'magnitude'}{' + fine-tune' if fine else ''}"
            axis.scatter([100 * row["kept"] for row in rows], [100 * row[key] for row in rows], marker=marker,
                         label=label)
        axis.axhline(100 * report["baselines"][name]["test_error"], color="gray", linestyle=":", label="trained")
        axis.set(xlabel="weights kept (%)", ylabel="test error (%)", title=name, yscale="log")
        axis.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv=None) -> dict:
    parser = benchmark_parser(__doc__, "LeNet-300-100 (2 epochs), P = 600, one g", RESULTS / "compression.json")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--progress", action="store_true", help="progress bars of each trim")
    parser.add_argument("--resume", action="store_true", help="reuse the rows already in --out (same seed and P)")
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(args.out.read_text()) if args.resume and args.out.exists() else None
    report = run(QUICK if args.quick else FULL, args.seed, args.progress,
                 checkpoint=lambda partial: args.out.write_text(json.dumps(partial, indent=2)), previous=previous)
    write_results(args.out, report, markdown(report))
    plot(report, args.out.with_suffix(".png"))
    return report


if __name__ == "__main__":
    main()
