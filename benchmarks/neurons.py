"""Neuron trimming on MNIST: the smaller models' widths, FLOPs and CPU latency against test error, without and with
fine-tuning.

One run, same data, same process: LeNet-300-100 and LeNet-5 (nettrim.zoo, trained with seeded Adam and cached);
calibration = seeded training images; for each g of the grid, one cascade trim with structure="neurons" (the
rows' group norm, reweighted) that returns a physically smaller model, whose first layer gathers the inputs it
still reads (gather_inputs=True); its test error on the 10,000 test images, then again after masked fine-tuning
(nettrim.finetune: Adam, the zeros kept) of a copy. Rows marked "refit" fit the kept weights again by least
squares once the trim is done (refit=True, nettrim/refit.py). Widths, parameters,
FLOPs and latency (batch 1 and 256, median of repeated runs on this machine's CPU) come from the trim's report,
before and after, measured in the same process one after the other.
Writes benchmarks/results/neurons.json, a markdown table and a plot of test error against FLOPs.

    python -m benchmarks.neurons           # the grid on both models (about 20 minutes on 2 cores)
    python -m benchmarks.neurons --quick   # LeNet-300-100 trained one epoch on 5,000 images, one small trim
    python -m benchmarks.neurons --resume  # reuse the trims already in the JSON, compute the new ones
"""

from __future__ import annotations

import copy
import json
import sys
import time
import warnings
from pathlib import Path

if __package__ in (None, ""):  # run as a script: this file's folder would shadow the `solvers` package
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import numpy as np  # noqa: E402
import torch  # noqa: E402

import nettrim  # noqa: E402
from benchmarks.models import benchmark_model  # noqa: E402
from benchmarks.results_files import benchmark_parser, fingerprint, machine, same_model, write_results  # noqa: E402
from nettrim.finetune import ShuffledBatches  # noqa: E402
from nettrim.zoo import mnist_inputs, test_error  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
#: Per model: training epochs and rate (the zoo's cached models, as in benchmarks/schedules.py), calibration images,
#: max_samples, the grid of g, reweighting rounds, and the masked fine-tuning (epochs, learning rate; Adam with the
#: cosine decay, the schedule docs/compress.md measured best on both models) of each trim;
#: "factors": further trims (g, gamma, kappa, fine-tuning epochs, refit) with other cascade factors: a large gamma
#: trims the middle layer's inputs (the first hidden layer) harder, kappa < 1 asks the last layer to fit the
#: original outputs better than the error it inherits, which keeps more of the second hidden layer.
FULL = {"lenet_300_100": {"epochs": 30, "lr": 2e-3, "calibration": 2000, "max_samples": 2000,
                          "grid": [0.1, 0.15, 0.2, 0.25, 0.3], "reweight": 2, "finetune": (3, 3e-3),
                          "factors": [(0.2, 6.0, 0.8, 20, False), (0.25, 1.1, None, 3, True),
                                      (0.27, 1.1, 0.85, 3, True), (0.2, 6.0, 0.8, 20, True),
                                      (0.23, 6.0, 0.8, 20, True), (0.21, 6.0, 0.8, 20, True),
                                      (0.21, 6.0, 0.8, 40, True)]},
        "lenet5": {"epochs": 10, "lr": 1e-3, "calibration": 1000, "max_samples": 4000, "grid": [0.1, 0.2, 0.25, 0.3],
                   "reweight": 2, "finetune": (3, 3e-3), "factors": [(0.2, 1.1, None, 3, True),
                                                                    (0.25, 1.1, None, 3, True)]}}
QUICK = {"lenet_300_100": {"epochs": 1, "lr": 1e-3, "training_images": 5000, "calibration": 300, "max_samples": 300,
                           "grid": [0.2], "reweight": 1, "finetune": (1, 1e-4),
                           "factors": [(0.2, 1.1, None, 1, True)]}}


def one_trim(model, calibration, test, training, g: float, sizes: dict, gamma: float = 1.1,
             kappa: float | None = None, epochs: int | None = None, refit: bool = False) -> dict:
    """One neuron trim at g (cascade factors gamma, kappa; refit), then masked fine-tuning of a copy on
    `training` (images, labels), shuffled alike for every trim, for `epochs` (default sizes["finetune"]'s)."""
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        small, report = nettrim.trim(model, calibration, epsilon=g, reweight=sizes["reweight"], structure="neurons",
                                     max_samples=sizes["max_samples"], gamma=gamma, kappa=kappa, refit=refit,
                                     gather_inputs=True, progress=False)
    seconds = time.perf_counter() - start
    epochs, lr = epochs or sizes["finetune"][0], sizes["finetune"][1]
    tuned = nettrim.finetune(copy.deepcopy(small), ShuffledBatches(*training, seed=0), epochs=epochs, lr=lr,
                             schedule="cosine", progress=False).eval()
    return {"g": g, "gamma": gamma, "kappa": kappa, "refit": refit, "gather_inputs": True, "seconds": seconds,
            "test_error": test_error(small, *test),
            "test_error_finetuned": test_error(tuned, *test),
            "finetune": {"epochs": epochs, "lr": lr, "schedule": "cosine"},
            "widths": {row.name: [row.width_before, row.width_after] for row in report.layers},
            "inputs_unread": report.layers[0].inputs_unread, "size": report.size,
            "refit_error": {row.name: row.refit_error for row in report.layers} if refit else None,
            "weights_kept": report.kept, "statuses": [row.status for row in report.layers],
            "dense_fallback": report.dense_fallback, "warnings": [str(warning.message) for warning in caught]}


def markdown(report: dict) -> str:
    lines = ["| model | g | gamma, kappa | refit | widths (input - hidden - output) | params | FLOPs | latency b=1 "
             "| latency b=256 | test error | fine-tuned (epochs) | seconds |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, result in report["models"].items():
        first, inputs = result["trims"][0], result["inputs"]
        lines.append(f"| {name} | - | - | - | {inputs} - {' - '.join(str(w[0]) for w in first['widths'].values())} "
                     f"| {first['size']['params']['before']:,} | {first['size']['flops']['before']:,} | 1x | 1x "
                     f"| {100 * result['test_error']:.2f}% | - | - |")
        for run in result["trims"]:
            size = run["size"]
            speed = {batch: times["before"] / times["after"] for batch, times in size["latency_ms"].items()}
            factors = f"{run['gamma']:g}, {run['kappa'] or '-'}"
            read = inputs - sum(size.get("inputs_dropped", {}).values())
            widths = " - ".join([str(read)] + [str(w[1]) for w in run["widths"].values()])
            lines.append(f"| {name} | {run['g']:g} | {factors} | {'yes' if run['refit'] else 'no'} | {widths} "
                         f"| {size['params']['after']:,} | {size['flops']['after']:,} | {speed['1']:.2f}x "
                         f"| {speed['256']:.2f}x | {100 * run['test_error']:.2f}% "
                         f"| {100 * run['test_error_finetuned']:.2f}% ({run['finetune']['epochs']}) "
                         f"| {run['seconds']:.0f} |")
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    """Test error against FLOPs per input, each model's trims without and with fine-tuning."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for name, result in report["models"].items():
        flops = [run["size"]["flops"]["after"] for run in result["trims"]]
        axis.plot(flops, [100 * run["test_error"] for run in result["trims"]], "o-", label=f"{name}, trimmed")
        axis.plot(flops, [100 * run["test_error_finetuned"] for run in result["trims"]], "s--",
                  label=f"{name}, fine-tuned")
        axis.plot([result["trims"][0]["size"]["flops"]["before"]], [100 * result["test_error"]], "k*")
    axis.set_xscale("log")
    axis.set_xlabel("FLOPs per input")
    axis.set_ylabel("MNIST test error (%)")
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def previous_trims(out: Path, name: str, result: dict) -> dict[tuple, dict]:
    """Model `name`'s trims in an earlier run written to `out`, by (g, gamma, kappa, fine-tuning epochs, refit),
    when its model (the same trained weights: results_files.same_model), calibration and max_samples are this
    run's and its first layer gathered its inputs."""
    if not out.exists():
        return {}
    previous = json.loads(out.read_text())["models"].get(name, {})
    if any(previous.get(key) != result[key] for key in ("epochs", "calibration", "max_samples")):
        return {}
    if not same_model(previous, result):
        print(f"--resume: {name}'s earlier trims are not known to be of this trained model (its fingerprint differs "
              "or was not recorded); recomputed")
        return {}
    return {(run["g"], run["gamma"], run["kappa"], run["finetune"]["epochs"], run["refit"]): run
            for run in previous.get("trims", []) if run.get("gather_inputs")}


def main(argv=None) -> dict:
    parser = benchmark_parser(__doc__, "LeNet-300-100 trained one epoch on 5,000 images, one small trim",
                              RESULTS / "neurons.json")
    parser.add_argument("--resume", action="store_true",
                        help="reuse the trims already in --out (same model, calibration and max_samples)")
    args = parser.parse_args(argv)
    grid = QUICK if args.quick else FULL
    report = {"machine": machine(), "models": {}}
    for name, sizes in grid.items():
        model = benchmark_model(name, sizes)
        test = mnist_inputs(name, "test")
        images, labels = mnist_inputs(name, "train")
        chosen = np.sort(np.random.default_rng(0).choice(len(images), sizes["calibration"], replace=False))
        training = (images, torch.from_numpy(labels))
        first = next(module for module in model.modules() if isinstance(module, torch.nn.Linear | torch.nn.Conv2d))
        result = {"epochs": sizes["epochs"], "calibration": sizes["calibration"], "max_samples": sizes["max_samples"],
                  "inputs": int(first.weight.shape[1]), "test_error": test_error(model, *test),
                  "fingerprint": fingerprint(model), "trims": []}
        done = previous_trims(args.out, name, result) if args.resume else {}
        settings = [(g, 1.1, None, sizes["finetune"][0], False) for g in sizes["grid"]] + sizes.get("factors", [])
        for setting in settings:
            result["trims"].append(done.get(tuple(setting)) or one_trim(
                model, images[chosen], test, training, setting[0], sizes, *setting[1:]))
        report["models"][name] = result
    write_results(args.out, report, markdown(report))
    plot(report, args.out.with_suffix(".png"))
    return report


if __name__ == "__main__":
    main()
