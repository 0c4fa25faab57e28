"""LeNet-5's convolutions: does the trim change with more calibration positions, or with one budget per layer?

The Caffe LeNet-5 has no ReLU after its convs (their outputs go to max pooling), so they get the linear program
||U^T X - Y|| <= eps, with X the unfolded patches: one column per image and output position. A calibration set of
images gives far more positions than max_samples, which keeps a seeded random subset. For each g, max_samples and
budget form ("neuron": one budget per output channel; "layer": one Frobenius budget for the whole layer), only
the two convs are trimmed (parallel mode, so each conv sees the original model's input), and measured:
- each conv's kept fraction and its relative response error ||U^T X - Y||_F / ||Y||_F on ALL positions of
  images never used for calibration (the test set's first `held_out` images): whether the budget g, kept on the
  subsample, holds on positions it never saw;
- the test error (10,000 images) of the model with both convs trimmed, and the seconds of the trim.
Writes benchmarks/results/conv_budgets.json and a markdown table.

    python -m benchmarks.conv_budgets           # the grid below (a few minutes on 2 cores)
    python -m benchmarks.conv_budgets --quick   # LeNet-5 trained one epoch on 5,000 images, one small grid
"""

from __future__ import annotations

import itertools
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: this file's folder would shadow the `solvers` package
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import numpy as np  # noqa: E402
import torch  # noqa: E402

import nettrim  # noqa: E402
from benchmarks.models import benchmark_model  # noqa: E402
from benchmarks.results_files import benchmark_parser, machine, write_results  # noqa: E402
from nettrim.zoo import mnist_inputs, test_error  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
CONVS = ["0", "2"]
FULL = {"epochs": 10, "calibration": 1000, "held_out": 500, "grid": [0.1, 0.2],
        "max_samples": [2000, 8000, 32000], "budgets": ["neuron", "layer"]}
QUICK = {"epochs": 1, "training_images": 5000, "calibration": 100, "held_out": 50, "grid": [0.2],
         "max_samples": [500, 2000], "budgets": ["neuron", "layer"]}


def conv_inputs(model: torch.nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each conv's input in `model` on `images` (forward hooks)."""
    captured, modules = {}, dict(model.named_modules())
    handles = [modules[name].register_forward_hook(
        lambda module, args, output, name=name: captured.__setitem__(name, args[0].detach())) for name in CONVS]
    with torch.no_grad():
        model(images)
    for handle in handles:
        handle.remove()
    return captured


def response_errors(original: torch.nn.Module, trimmed: torch.nn.Module, images: torch.Tensor) -> dict[str, float]:
    """Per conv, ||trimmed conv(x) - conv(x)||_F / ||conv(x)||_F over every position of `images`, x being the
    conv's input in the original model (the same input the parallel-mode program was given)."""
    inputs = conv_inputs(original, images)
    ours, theirs = dict(original.named_modules()), dict(trimmed.named_modules())
    with torch.no_grad():
        return {name: float(torch.linalg.vector_norm(theirs[name](x) - ours[name](x))
                            / torch.linalg.vector_norm(ours[name](x))) for name, x in inputs.items()}


def one_trim(model, calibration, held_out, test, g: float, max_samples: int, budget: str) -> dict:
    start = time.perf_counter()
    trimmed, report = nettrim.trim(model, calibration, epsilon=g, mode="parallel", layers=CONVS, budget=budget,
                                   max_samples=max_samples, progress=False)
    seconds = time.perf_counter() - start
    rows = {row.name: row for row in report.layers}
    return {"g": g, "max_samples": max_samples, "budget": budget, "seconds": round(seconds, 2),
            "kept": {name: rows[name].kept for name in CONVS},
            "status": {name: rows[name].status for name in CONVS},
            "held_out_response_error": response_errors(model, trimmed, held_out),
            "test_error": test_error(trimmed, *test)}


def run(config: dict) -> dict:
    model = benchmark_model("lenet5", config)
    images, _ = mnist_inputs("lenet5", "train")
    test = mnist_inputs("lenet5", "test")
    chosen = np.sort(np.random.default_rng(0).choice(len(images), config["calibration"], replace=False))
    calibration, held_out = images[torch.from_numpy(chosen)], test[0][: config["held_out"]]
    trims = [one_trim(model, calibration, held_out, test, g, samples, budget) for g, samples, budget
             in itertools.product(config["grid"], config["max_samples"], config["budgets"])]
    return {"config": config, "test_error": test_error(model, *test), "trims": trims,
            "positions": {"0": config["calibration"] * 24 * 24, "2": config["calibration"] * 8 * 8},
            "machine": machine()}


def markdown(report: dict) -> str:
    positions = report["positions"]
    lines = [f"LeNet-5 ({report['test_error']:.2%} test error), convs trimmed in parallel mode on "
             f"{report['config']['calibration']:,} images ({positions['0']:,} positions of conv '0', "
             f"{positions['2']:,} of conv '2'); response error on all positions of "
             f"{report['config']['held_out']} test images.", "",
             "| g | max_samples | budget | kept '0' | kept '2' | response error '0' | response error '2' "
             "| test error | seconds |", "|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for trim in report["trims"]:
        kept, error = trim["kept"], trim["held_out_response_error"]
        lines.append(f"| {trim['g']:g} | {trim['max_samples']:,} | {trim['budget']} | {kept['0']:.1%} "
                     f"| {kept['2']:.1%} | {error['0']:.3f} | {error['2']:.3f} | {trim['test_error']:.2%} "
                     f"| {trim['seconds']:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = benchmark_parser(__doc__, "LeNet-5 trained one epoch on 5,000 images, a small grid",
                              RESULTS / "conv_budgets.json")
    args = parser.parse_args(argv)
    report = run(QUICK if args.quick else FULL)
    write_results(args.out, report, markdown(report))
    return report


if __name__ == "__main__":
    main()
