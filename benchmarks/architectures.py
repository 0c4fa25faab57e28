"""A residual network with BatchNorm on Fashion-MNIST: weights removed against test error, no fine-tuning.

One run, same data, same process: ResNet-8 (nettrim.zoo.resnet: a 3 x 3 stem and three stages of one basic
block, widths 16-32-64, 1 x 1 shortcut convs where the shape changes) trained with seeded Adam on Fashion-MNIST
(cached); calibration = 1,000 seeded training images (max_samples per layer); for each mode and g of the grid,
one trim of every conv and the classifier (BatchNorm folded first), plain or with reweighted l1; test error on
the 10,000 test images.
Per trim: the weights removed, the test error, the seconds per layer and the layers' statuses.
Writes benchmarks/results/architectures.json and a markdown table.

Fashion-MNIST is read from --data (the original idx gz files; default ../shared/data/fashion-mnist next to the
repository), never downloaded.

    python -m benchmarks.architectures           # 3 training epochs, 12 trims (about 25 minutes on 2 cores)
    python -m benchmarks.architectures --quick   # one epoch on 5,000 images, one trim per mode
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path

if __package__ in (None, ""):  # run as a script: this file's folder would shadow the `solvers` package
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import numpy as np  # noqa: E402

import nettrim  # noqa: E402
from benchmarks.models import benchmark_model  # noqa: E402
from benchmarks.results_files import benchmark_parser, fingerprint, machine, same_model, write_results  # noqa: E402
from nettrim.zoo import mnist_inputs, test_error  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
#: (mode, g, reweighting rounds, budget form) of each trim.
FULL = {"epochs": 3, "calibration": 1000, "max_samples": 5000,
        "trims": [("parallel", 0.05, 0, "neuron"), ("parallel", 0.1, 0, "neuron"), ("parallel", 0.2, 0, "neuron"),
                  ("cascade", 0.05, 0, "neuron"), ("cascade", 0.1, 0, "neuron"), ("cascade", 0.15, 0, "neuron"),
                  ("cascade", 0.2, 0, "neuron"), ("cascade", 0.05, 3, "neuron"), ("cascade", 0.1, 3, "neuron"),
                  ("cascade", 0.15, 3, "neuron"), ("cascade", 0.175, 3, "neuron"), ("cascade", 0.2, 3, "neuron"),
                  ("cascade", 0.15, 3, "layer"), ("cascade", 0.175, 3, "layer")]}
QUICK = {"epochs": 1, "training_images": 5000, "calibration": 200, "max_samples": 1000,
         "trims": [("parallel", 0.1, 0, "neuron"), ("cascade", 0.1, 0, "layer")]}


def one_trim(model, calibration, test, mode: str, g: float, reweight: int, budget: str, max_samples: int) -> dict:
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trimmed, report = nettrim.trim(model, calibration, epsilon=g, mode=mode, reweight=reweight, budget=budget,
                                       max_samples=max_samples, progress=False)
    seconds = time.perf_counter() - start
    return {"mode": mode, "g": g, "reweight": reweight, "budget": budget, "removed": 1 - report.kept,
            "test_error": test_error(trimmed, *test), "seconds": seconds, "dense_fallback": report.dense_fallback,
            "layers": [{"name": row.name, "shape": row.shape, "samples": row.samples, "kept": row.kept,
                        "status": row.status, "iterations": row.iterations, "seconds": row.seconds}
                       for row in report.layers],
            "warnings": [str(warning.message) for warning in caught]}


def markdown(report: dict) -> str:
    lines = [f"ResNet-8 on Fashion-MNIST ({report['model']['parameters']:,} parameters, {report['model']['epochs']} "
             f"epochs): test error {100 * report['model']['test_error']:.2f}% before trimming; calibration "
             f"{report['calibration']} images, max_samples {report['max_samples']}, no fine-tuning.", "",
             "| mode | g | reweight | budget | weights removed | test error | change (points) | seconds "
             "| s / layer (max) | neurons dense |", "|---|---|---|---|---|---|---|---|---|---|"]
    base = report["model"]["test_error"]
    for run in report["trims"]:
        per_layer = [layer["seconds"] for layer in run["layers"]]
        lines.append(f"| {run['mode']} | {run['g']:g} | {run['reweight']} | {run.get('budget', 'neuron')} "
                     f"| {100 * run['removed']:.1f}% "
                     f"| {100 * run['test_error']:.2f}% "
                     f"| {100 * (run['test_error'] - base):+.2f} | {run['seconds']:.0f} | {np.mean(per_layer):.1f} "
                     f"({max(per_layer):.1f}) | {run['dense_fallback']} |")
    return "\n".join(lines)


def previous_trims(out: Path, report: dict) -> dict[tuple, dict]:
    """The trims of an earlier run written to `out`, by (mode, g, reweight, budget), when its model (the same
    trained weights: results_files.same_model), calibration and max_samples are this run's (rows written before the
    budget form was recorded used per-neuron budgets)."""
    if not out.exists():
        return {}
    previous = json.loads(out.read_text())
    if any(previous.get(key) != report[key] for key in ("calibration", "max_samples")):
        return {}
    if not same_model(previous.get("model"), report["model"]) or any(
            previous["model"].get(key) != report["model"][key] for key in ("name", "epochs", "parameters")):
        print("--resume: the earlier trims are not known to be of this trained model (its fingerprint differs or "
              "was not recorded); recomputed")
        return {}
    return {(run["mode"], run["g"], run["reweight"], run.get("budget", "neuron")): {"budget": "neuron", **run}
            for run in previous["trims"]}


def main(argv=None) -> dict:
    parser = benchmark_parser(__doc__, "one epoch on 5,000 images, one trim per mode", RESULTS / "architectures.json")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "fashion-mnist",
                        help="the folder of Fashion-MNIST's idx gz files")
    parser.add_argument("--resume", action="store_true",
                        help="reuse the trims already in --out (same model, calibration and max_samples)")
    args = parser.parse_args(argv)
    if not (args.data / "train-images-idx3-ubyte.gz").exists():
        parser.error(f"--data: {args.data} does not hold Fashion-MNIST's idx files (train-images-idx3-ubyte.gz ...)")
    sizes = QUICK if args.quick else FULL
    model = benchmark_model("resnet8", sizes, args.data)
    test = mnist_inputs("resnet8", "test", args.data)
    images, _ = mnist_inputs("resnet8", "train", args.data)
    calibration = images[np.sort(np.random.default_rng(0).choice(len(images), sizes["calibration"], replace=False))]
    report = {"machine": machine(),
              "model": {"name": "resnet8", "epochs": sizes["epochs"], "test_error": test_error(model, *test),
                        "parameters": sum(p.numel() for p in model.parameters()), "fingerprint": fingerprint(model)},
              "calibration": sizes["calibration"], "max_samples": sizes["max_samples"],
              "trims": []}
    done = previous_trims(args.out, report) if args.resume else {}
    for mode, g, reweight, budget in sizes["trims"]:
        reused = done.get((mode, g, reweight, budget))
        report["trims"].append(reused or one_trim(model, calibration, test, mode, g, reweight, budget,
                                                  sizes["max_samples"]))
    write_results(args.out, report, markdown(report))
    return report


if __name__ == "__main__":
    main()
