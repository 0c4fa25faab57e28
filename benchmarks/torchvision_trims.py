"""Whole torchvision classifiers trimmed end to end on this CPU: the seconds, and how every layer ended.

One process, models one after the other: torchvision's mobilenet_v3_small (depthwise convs, squeeze-and-excitation,
hardswish), resnet18 and squeezenet1_1 with seeded random weights (nothing is downloaded), 10 classes, in eval
mode; calibration = `images` seeded N(0, 1) images of 32 x 32; nettrim.trim with every default (cascade, g = 0.05,
all Linear and Conv2d layers, depthwise and grouped included) except max_samples. Per model: the seconds of the
trim, the weights kept, the layers per status, the dense-fallback neurons, the layers left out (with the reason),
the slowest layers, and the relative change of the logits on the calibration images. Writes
benchmarks/results/torchvision_trims.json and a markdown table. torchvision is a test dependency
(tests/torchvision_models.py imports it here).

    python -m benchmarks.torchvision_trims           # the three models (7 min 2 s on 2 cores)
    python -m benchmarks.torchvision_trims --quick   # mobilenet_v3_small on 4 images, max_samples 100, max_iter 30
    python -m benchmarks.torchvision_trims --models resnet18   # one model (its row only)
"""

from __future__ import annotations

import collections
import sys
import time
import warnings
from pathlib import Path

if __package__ in (None, ""):  # run as a script: this file's folder would shadow the `solvers` package
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import torch  # noqa: E402

import nettrim  # noqa: E402
from benchmarks.results_files import benchmark_parser, machine, write_results  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
FULL = {"models": ["mobilenet_v3_small", "resnet18", "squeezenet1_1"], "images": 64, "max_samples": 1000}
QUICK = {"models": ["mobilenet_v3_small"], "images": 4, "max_samples": 100, "max_iter": 30}


def torchvision_models():
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from torchvision_models import models

    return models()


def one_model(name: str, config: dict) -> dict:
    torch.manual_seed(0)
    model = getattr(torchvision_models(), name)(weights=None, num_classes=10).eval()
    images = torch.randn(config["images"], 3, 32, 32)
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:  # dense fallbacks are counted in the row
        warnings.simplefilter("always")
        trimmed, report = nettrim.trim(model, images, max_samples=config["max_samples"],
                                       max_iter=config.get("max_iter"), progress=False)
    seconds = time.perf_counter() - start
    with torch.no_grad():
        before, after = model(images), trimmed(images)
    slowest = sorted(report.layers, key=lambda row: row.seconds, reverse=True)[:3]
    return {"model": name, "seconds": round(seconds, 1), "layers": len(report.layers), "kept": report.kept,
            "statuses": dict(collections.Counter(row.status for row in report.layers)),
            "dense_fallback": report.dense_fallback, "not_trimmed": report.not_trimmed,
            "slowest": {row.name: round(row.seconds, 1) for row in slowest},
            "logit_change": float(torch.linalg.vector_norm(after - before) / torch.linalg.vector_norm(before)),
            "warnings": [str(warning.message)[:200] for warning in caught]}


def markdown(report: dict) -> str:
    config = report["config"]
    lines = [f"Random weights, {config['images']} images of 32 x 32, max_samples {config['max_samples']:,}, "
             "every other option the default (cascade, g = 0.05).", "",
             "| model | layers | seconds | weights kept | statuses | dense-fallback neurons | left out "
             "| logits' change | slowest layers (s) |", "|---|---:|---:|---:|---|---:|---:|---:|---|"]
    for row in report["rows"]:
        statuses = ", ".join(f"{count} {status}" for status, count in sorted(row["statuses"].items()))
        slowest = ", ".join(f"{name} {seconds:g}" for name, seconds in row["slowest"].items())
        lines.append(f"| {row['model']} | {row['layers']} | {row['seconds']:.0f} | {row['kept']:.1%} | {statuses} "
                     f"| {row['dense_fallback']} | {len(row['not_trimmed'])} | {row['logit_change']:.3f} "
                     f"| {slowest} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = benchmark_parser(__doc__, "mobilenet_v3_small on 4 images, max_samples 100, max_iter 30",
                              RESULTS / "torchvision_trims.json")
    parser.add_argument("--models", nargs="+", choices=FULL["models"], help="only these models")
    args = parser.parse_args(argv)
    config = dict(QUICK if args.quick else FULL)
    config["models"] = args.models or config["models"]
    report = {"config": config, "rows": [], "machine": machine()}
    for name in config["models"]:  # written after every model, so a stopped run keeps the models it finished
        report["rows"].append(one_model(name, config))
        write_results(args.out, report, markdown(report))
    return report


if __name__ == "__main__":
    main()
