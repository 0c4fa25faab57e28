"""Compression on MNIST: Net-Trim (parallel and cascade, plain and reweighted l1) against magnitude pruning,
SparseGPT and Wanda at exactly the same per-layer nonzeros, with and without one masked fine-tuning epoch.

One run, same data, same process: LeNet-300-100 and LeNet-5 (Caffe 20-50-800-500) trained with seeded Adam on
the bundled MNIST (cached); calibration = P seeded training images; for each model, mode, number of
reweighting rounds and g of the grid, one trim; for each trim, copies of the original model pruned to the trimmed
model's per-layer nonzeros (bias row included) by magnitude (the largest |w| of each layer's W), by SparseGPT and
by Wanda (benchmarks/peers.py: layer by layer in execution order, on the same calibration images and P); each,
as it is and after one masked fine-tuning epoch (Adam, lr 1e-4). Test error on the 10,000 test images.
Writes benchmarks/results/compression.json, a markdown table and a PNG plot of test error against weights kept.

    python -m benchmarks.compression            # the grid below (about an hour on 2 cores)
    python -m benchmarks.compression --quick    # LeNet-300-100 briefly trained, one g: a few minutes
    python -m benchmarks.compression --models lenet5 --resume   # one model again; the others' rows are kept
"""

from __future__ import annotations

import copy
import itertools
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
from benchmarks.peers import pruned_sequentially, sparsegpt, wanda  # noqa: E402
from benchmarks.results_files import benchmark_parser, fingerprint, same_model, write_results  # noqa: E402
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
PEERS = {"sparsegpt": sparsegpt, "wanda": wanda}
METHODS = ("nettrim", "magnitude", *PEERS)
LABELS = {"nettrim": "Net-Trim", "magnitude": "magnitude", "sparsegpt": "SparseGPT", "wanda": "Wanda"}


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
    Rows of `previous` (an earlier report with the same seed and samples, measured on the same trained model) are
    reused instead of recomputed, each method's on its own (an earlier report without the peers gets them added)."""
    rows, baselines = [], {}
    report = {"config": config, "seed": seed, "baselines": baselines, "rows": rows,
              "machine": {"platform": platform.platform(), "cpus": torch.get_num_threads()}}
    for name, settings in config["models"].items():
        model, calibration, scored, baselines[name] = _prepared(name, settings["epochs"], config, seed)
        reusable = _reusable(previous, name, baselines[name], seed, config["samples"])
        for mode, rounds, g in itertools.product(settings["modes"], settings["reweight"], settings["grid"]):
            common = {"model": name, "mode": mode, "reweight": rounds, "g": g}
            ours = reusable.get(_key({**common, "method": "nettrim"}))
            if ours is None:
                trimmed, trimming = nettrim.trim(model, calibration, epsilon=g, mode=mode, reweight=rounds,
                                                 max_samples=config["samples"], progress=progress, seed=seed)
                ours = {**common, "kept": trimming.nonzeros_after / trimming.weights,
                        "layer_nonzeros": {row.name: row.nonzeros_after for row in trimming.layers},
                        "method": "nettrim", "seconds": round(trimming.seconds, 1),
                        "statuses": [row.status for row in trimming.layers], **scored(trimmed)}
            rows.append(ours)
            for method in METHODS[1:]:
                row = reusable.get(_key({**common, "method": method}))
                rows.append(row or _peer_row(method, model, calibration, ours, scored, config, seed))
            print(" | ".join(_row_line(row) for row in rows[-len(METHODS):]), flush=True)
            if checkpoint is not None:
                checkpoint(report)
    return report


def _reusable(previous: dict | None, name: str, baseline: dict, seed: int, samples: int) -> dict[tuple, dict]:
    """Model `name`'s rows of an earlier report, by _key, when it had this seed and P and the same trained model."""
    if previous is None or (previous["seed"], previous["config"]["samples"]) != (seed, samples):
        return {}
    if not same_model(previous["baselines"].get(name), baseline):
        print(f"--resume: {name}'s rows in the earlier report are not known to be of this trained model (its "
              "fingerprint differs or was not recorded); recomputed")
        return {}
    return {_key(row): row for row in previous["rows"] if row["model"] == name}


def _prepared(name: str, epochs: int, config: dict, seed: int):
    """The trained model, its calibration images, scored(model) -> test errors before and after fine-tuning,
    and the model's baseline entry."""
    start = time.perf_counter()
    model = trained(name, epochs=epochs, lr=TRAINING_LR[name], seed=seed)
    training_seconds = time.perf_counter() - start
    train = mnist_inputs(name, "train")
    test = mnist_inputs(name, "test")
    chosen = np.sort(np.random.default_rng(seed).choice(len(train[0]), config["samples"], replace=False))
    weights = sum(layer.weight_matrix().size for layer in select_layers(model))
    baseline = {"epochs": epochs, "training_seconds": round(training_seconds, 1),
                "test_error": test_error(model, *test), "weights": weights, "fingerprint": fingerprint(model)}
    return (model, train[0][torch.from_numpy(chosen)],
            lambda pruned: evaluate(pruned, test, train, config["finetune_lr"], seed), baseline)


def _peer_row(method: str, model, calibration, ours: dict, scored, config: dict, seed: int) -> dict:
    """The row of `method` pruning the original model to Net-Trim's per-layer nonzeros (`ours`)."""
    start = time.perf_counter()
    if method == "magnitude":
        pruned = magnitude_pruned(model, ours["layer_nonzeros"])
    else:
        pruned = pruned_sequentially(model, calibration, ours["layer_nonzeros"], PEERS[method], config["samples"],
                                     seed)
    seconds = round(time.perf_counter() - start, 1)
    reached = {layer.name: int(np.count_nonzero(layer.weight_matrix()))
               for layer in select_layers(pruned, list(ours["layer_nonzeros"]))}
    shared = {key: ours[key] for key in ("model", "mode", "reweight", "g", "kept")}
    return {**shared, "layer_nonzeros": reached, "method": method, "seconds": seconds, **scored(pruned)}


def _key(row: dict) -> tuple:
    return row["model"], row["mode"], row["reweight"], row["g"], row["method"]


def _row_line(row: dict) -> str:
    return (f"{row['model']} {row['method']} {row['mode']} rw{row['reweight']} g={row['g']}: "
            f"kept {row['kept']:.1%}, error {row['test_error']:.2%} -> {row['test_error_finetuned']:.2%}")


def markdown(report: dict) -> str:
    lines = []
    for name, base in report["baselines"].items():
        lines += [f"**{name}** (trained {base['epochs']} epochs, test error {base['test_error']:.2%}, "
                  f"{base['weights']:,} weights incl. biases; P = {report['config']['samples']:,} calibration "
                  "images). Test error as pruned / after one fine-tuning epoch.", "",
                  "| mode | reweight | g | weights kept | " + " | ".join(LABELS[m] for m in METHODS)
                  + " | Net-Trim seconds |", "|---|---:|---:|---:|" + "---:|" * (len(METHODS) + 1)]
        rows = [row for row in report["rows"] if row["model"] == name]
        for start in range(0, len(rows), len(METHODS)):
            group = {row["method"]: row for row in rows[start:start + len(METHODS)]}
            ours = group["nettrim"]
            errors = " | ".join(f"{group[m]['test_error']:.2%} / {group[m]['test_error_finetuned']:.2%}"
                                for m in METHODS)
            lines.append(f"| {ours['mode']} | {ours['reweight']} | {ours['g']} | {ours['kept']:.1%} | {errors} "
                         f"| {ours['seconds']:.0f} |")
        lines.append("")
    return "\n".join(lines).rstrip()


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(report["baselines"])
    figure, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
    markers = {"nettrim": "o", "magnitude": "x", "sparsegpt": "^", "wanda": "v"}
    for axis, name in zip(axes[0], models, strict=True):
        for method in METHODS:
            rows = [row for row in report["rows"] if row["model"] == name and row["method"] == method]
            axis.scatter([100 * row["kept"] for row in rows], [100 * row["test_error"] for row in rows],
                         marker=markers[method], label=LABELS[method])
        axis.axhline(100 * report["baselines"][name]["test_error"], color="gray", linestyle=":", label="trained")
        axis.set(xlabel="weights kept (%)", ylabel="test error without fine-tuning (%)", title=name, yscale="log")
        axis.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def with_other_models(report: dict, earlier: dict | None) -> dict:
    """`report` and the models of `earlier` (the report already in --out) that it did not run, when `earlier` had
    the same seed and P (otherwise a warning names the models whose results --out loses); a carried model keeps its
    baseline, rows and config, and every baseline names the machine that measured it."""
    if earlier is None:
        return report
    if (earlier["seed"], earlier["config"]["samples"]) != (report["seed"], report["config"]["samples"]):
        lost = [name for name in earlier["baselines"] if name not in report["baselines"]]
        if lost:
            print(f"compression: the results of {', '.join(lost)} in --out (seed {earlier['seed']}, "
                  f"P = {earlier['config']['samples']}) are not of this run's seed and P; they are not kept",
                  file=sys.stderr)
        return report
    names = [name for name in FULL["models"] if name in report["baselines"] or name in earlier["baselines"]]
    source = {name: report if name in report["baselines"] else earlier for name in names}
    baselines = {name: {"machine": source[name]["machine"], **source[name]["baselines"][name]} for name in names}
    return {**report, "baselines": baselines,
            "config": {**report["config"], "models": {name: source[name]["config"]["models"][name] for name in names}},
            "rows": [row for name in names for row in source[name]["rows"] if row["model"] == name]}


def main(argv=None) -> dict:
    parser = benchmark_parser(__doc__, "LeNet-300-100 (2 epochs), P = 600, one g", RESULTS / "compression.json")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--progress", action="store_true", help="progress bars of each trim")
    parser.add_argument("--resume", action="store_true", help="reuse the rows already in --out (same seed and P)")
    parser.add_argument("--models", nargs="+", choices=sorted(FULL["models"]),
                        help="only these models; the others' results already in --out (same seed and P) are kept")
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    earlier = json.loads(args.out.read_text()) if args.out.exists() else None
    config = QUICK if args.quick else FULL
    if args.models:
        config = {**config, "models": {name: config["models"][name] for name in args.models
                                       if name in config["models"]}}
    kept = (lambda report: with_other_models(report, earlier)) if args.models else (lambda report: report)
    report = run(config, args.seed, args.progress, previous=earlier if args.resume else None,
                 checkpoint=lambda partial: args.out.write_text(json.dumps(kept(partial), indent=2)))
    report = kept(report)
    write_results(args.out, report, markdown(report))
    plot(report, args.out.with_suffix(".png"))
    return report


if __name__ == "__main__":
    main()
