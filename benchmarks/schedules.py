"""Trim-and-fine-tune schedules on MNIST: nettrim.compress against gradual magnitude pruning (GMP) with the same
fine-tuning budget, at the same final sparsity.

One run, same data, same process. The zoo's LeNet-300-100 (30 epochs) and LeNet-5 (10 epochs), trained on the 60,000
training images. The metric compress() is given is the accuracy on the first 5,000 test images (the validation
half), with max_drop = the error target minus the model's test error (the points of accuracy the target leaves;
the halves differ in difficulty, so the target itself is not applied to one half); the errors reported are on
the other 5,000 (held out: never seen by any choice) and on all 10,000. Calibration: P seeded training images.
compress(): `rounds` rounds, each a cascade trim (`reweight` rounds of reweighting) and `epochs` epochs of masked
fine-tuning (Adam, cosine from lr).
GMP (Zhu and Gupta 2017): R steps, as many as the rounds compress ran, step k pruning the smallest weights and
biases of all layers together (torch.nn.utils.prune.global_unstructured) to s_k = s (1 - (1 - k/R)^3) of zeros,
s = compress's final sparsity, each step followed by the same fine-tuning. Writes benchmarks/results/schedules.json
and a markdown table.

    python -m benchmarks.schedules            # both models (about an hour on 2 cores)
    python -m benchmarks.schedules --quick    # LeNet-300-100 briefly trained, 2 rounds of 1 epoch: minutes
    python -m benchmarks.schedules --tuning   # how the fine-tuning defaults were chosen (below): 15 minutes
    python -m benchmarks.schedules --refit    # compress with reweight=2 and refit=True (results/schedules_refit.*)
    python -m benchmarks.schedules --distill  # stages of neurons then weights, distilled (results/schedules_distill.*)

--distill: compress(structure=("neurons", "weights"), distill=0.9, refit=True): up to `rounds` rounds removing
whole neurons, then up to `rounds` rounds of scattered weights, every fine-tuning distilled from the original
model; GMP gets the same distilled fine-tuning for each of its steps.

--tuning: one cascade trim of each model (g = 0.3 for LeNet-300-100, 0.2 for LeNet-5), then masked fine-tuning
of that trimmed model for each learning rate, number of epochs and schedule of TUNING (Adam, batches of 128);
test error on all 10,000 test images; results/tuning.json and .md.
"""

from __future__ import annotations

import copy
import itertools
import platform
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: this file's folder would shadow the `solvers` package
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.nn.utils import prune  # noqa: E402

import nettrim  # noqa: E402
from benchmarks.results_files import benchmark_parser, fingerprint, write_results  # noqa: E402
from nettrim.compression import sparsity, weight_count  # noqa: E402
from nettrim.finetune import ShuffledBatches  # noqa: E402
from nettrim.layers import layer_kind  # noqa: E402
from nettrim.zoo import mnist_inputs, test_error, trained  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TRAINING_LR = {"lenet_300_100": 2e-3, "lenet5": 1e-3}
FULL = {"samples": 5000, "rounds": 8, "epochs": 3, "lr": 3e-3, "epsilon": 0.1, "reweight": 0, "models": {
    "lenet_300_100": {"training_epochs": 30, "target_error": 0.02},
    "lenet5": {"training_epochs": 10, "target_error": 0.01}}}
TUNING = {"lenet_300_100": {"training_epochs": 30, "g": 0.3, "lr": [1e-4, 3e-4, 1e-3, 3e-3], "epochs": [1, 3, 8],
                             "schedules": ["constant", "cosine"]},
          "lenet5": {"training_epochs": 10, "g": 0.2, "lr": [3e-4, 1e-3, 3e-3], "epochs": [1, 3],
                     "schedules": ["cosine"]}}
#: --refit: compress with reweighted trims whose kept weights are refitted (trim(refit=True)), from g = 0.2.
REFIT = {**FULL, "samples": 2000, "epsilon": 0.2, "reweight": 2, "refit": True}
#: --distill: neurons then weights, every fine-tuning distilled from the original model (weight 0.9).
DISTILL = {**REFIT, "epsilon": 0.1, "distill": 0.9, "structure": ["neurons", "weights"], "rounds": 12}
QUICK = {"samples": 600, "rounds": 2, "epochs": 1, "lr": 1e-3, "epsilon": 0.1, "reweight": 0, "models": {
    "lenet_300_100": {"training_epochs": 2, "target_error": 0.05}}}


def gradual_magnitude(model: torch.nn.Module, final_sparsity: float, steps: int, tune) -> torch.nn.Module:
    """GMP on a copy of `model`: `steps` global magnitude prunings to the cubic schedule, tune(model) after each."""
    pruned = copy.deepcopy(model)
    parameters = [(module, name) for module in pruned.modules() if layer_kind(module)
                  for name in ("weight", "bias") if getattr(module, name) is not None]
    total = sum(getattr(module, name).numel() for module, name in parameters)
    for step in range(1, steps + 1):
        zeros = round(total * final_sparsity * (1 - (1 - step / steps) ** 3))
        prune.global_unstructured(parameters, pruning_method=prune.L1Unstructured, amount=zeros)
        for module, name in parameters:
            prune.remove(module, name)
        tune(pruned)
    return pruned.eval()


def errors(model, halves) -> dict:
    validation, held_out = (test_error(model, images, labels) for images, labels in halves)
    return {"validation_error": validation, "held_out_error": held_out, "test_error": (validation + held_out) / 2}


def run_model(name: str, settings: dict, config: dict, seed: int, progress: bool) -> dict:
    model = trained(name, epochs=settings["training_epochs"], lr=TRAINING_LR[name], seed=seed)
    train_images, train_labels = mnist_inputs(name, "train")
    train_labels = torch.from_numpy(train_labels)
    test_images, test_labels = mnist_inputs(name, "test")
    halves = [(test_images[:5000], test_labels[:5000]), (test_images[5000:], test_labels[5000:])]
    chosen = np.sort(np.random.default_rng(seed).choice(len(train_images), config["samples"], replace=False))
    tuning = dict(epochs=config["epochs"], lr=config["lr"], schedule="cosine")
    distilled = dict(teacher=model, distill=config["distill"]) if config.get("distill") else {}
    original = errors(model, halves)
    max_drop = max(settings["target_error"] - original["test_error"], 0.0)
    start = time.perf_counter()
    compressed, history = nettrim.compress(
        model, train_images[torch.from_numpy(chosen)], ShuffledBatches(train_images, train_labels, seed=seed),
        evaluate=lambda m: 1 - test_error(m, *halves[0]), max_drop=max_drop, epsilon=config["epsilon"],
        rounds=config["rounds"], reweight=config["reweight"], max_samples=config["samples"], seed=seed,
        refit=config.get("refit", False), structure=_stages(config), distill=config.get("distill", 0.0),
        progress=progress, **tuning)
    compress_seconds = time.perf_counter() - start
    final = sparsity(compressed, total=weight_count(model))  # neurons removed count as zeros
    start = time.perf_counter()
    tune = ShuffledBatches(train_images, train_labels, seed=seed)
    steps = len(history.rounds)
    gmp = gradual_magnitude(model, final, steps,
                            lambda m: nettrim.finetune(m, tune, progress=False, **tuning, **distilled))
    gmp_seconds = time.perf_counter() - start
    return {"model": name, "fingerprint": fingerprint(model), "max_drop": max_drop, "original": original,
            "nettrim": {"sparsity": final, "widths": _widths(compressed), **errors(compressed, halves),
                        "seconds": round(compress_seconds, 1),
                        "history": history.to_dict()},
            "gmp": {"sparsity": sparsity(gmp), **errors(gmp, halves), "steps": steps,
                    "seconds": round(gmp_seconds, 1)}}


def _stages(config: dict) -> list[str]:
    """compress's structure stages in `config` (one "weights" stage by default)."""
    structure = config.get("structure", "weights")
    return [structure] if isinstance(structure, str) else list(structure)


def _steps(gmp: dict) -> str:
    """The GMP row's steps as recorded ("-" for results written before the count was)."""
    return f"{gmp['steps']} steps" if "steps" in gmp else "-"


def _widths(model: torch.nn.Module) -> list[int]:
    """The output widths (neurons or channels) of the model's Linear and Conv2d layers, in order."""
    return [module.weight.shape[0] for module in model.modules() if layer_kind(module)]


def run(config: dict, seed: int = 0, progress: bool = False) -> dict:
    rows = [run_model(name, settings, config, seed, progress) for name, settings in config["models"].items()]
    return {"config": config, "seed": seed, "rows": rows,
            "machine": {"platform": platform.platform(), "cpus": torch.get_num_threads()}}


def tuning_grid(seed: int = 0) -> dict:
    """The --tuning measurement (module docstring)."""
    rows = []
    for name, settings in TUNING.items():
        model = trained(name, epochs=settings["training_epochs"], lr=TRAINING_LR[name], seed=seed)
        train_images, train_labels = mnist_inputs(name, "train")
        train_labels = torch.from_numpy(train_labels)
        test = mnist_inputs(name, "test")
        chosen = np.sort(np.random.default_rng(seed).choice(len(train_images), 5000, replace=False))
        trimmed, report = nettrim.trim(model, train_images[torch.from_numpy(chosen)], epsilon=settings["g"],
                                       max_samples=5000, progress=False, seed=seed)
        base = {"model": name, "g": settings["g"], "kept": report.kept, "trimmed_error": test_error(trimmed, *test)}
        for lr, epochs, schedule in itertools.product(settings["lr"], settings["epochs"], settings["schedules"]):
            torch.manual_seed(seed)
            batches = ShuffledBatches(train_images, train_labels, seed=seed)
            tuned = nettrim.finetune(copy.deepcopy(trimmed), batches, epochs, lr, schedule=schedule, progress=False)
            rows.append({**base, "lr": lr, "epochs": epochs, "schedule": schedule,
                         "test_error": test_error(tuned.eval(), *test)})
            print(rows[-1], flush=True)
    return {"seed": seed, "rows": rows}


def tuning_markdown(report: dict) -> str:
    lines = ["| model | kept | trimmed error | lr | schedule | " + " | ".join(
        f"{epochs} epochs" for epochs in TUNING["lenet_300_100"]["epochs"]) + " |",
             "|---|---:|---:|---:|---|" + "---:|" * len(TUNING["lenet_300_100"]["epochs"])]
    cells: dict[tuple, dict] = {}
    for row in report["rows"]:
        cells.setdefault((row["model"], row["lr"], row["schedule"]), {"row": row})[row["epochs"]] = row["test_error"]
    for (model, lr, schedule), cell in cells.items():
        errors = " | ".join(f"{cell[e]:.2%}" if e in cell else "-" for e in TUNING["lenet_300_100"]["epochs"])
        lines.append(f"| {model} | {cell['row']['kept']:.1%} | {cell['row']['trimmed_error']:.2%} | {lr:g} "
                     f"| {schedule} | {errors} |")
    return "\n".join(lines)


def markdown(report: dict) -> str:
    config = report["config"]
    stages = _stages(config)
    rounds = config["rounds"] * len(stages)
    distill = f", distilled from the original (weight {config['distill']:g})" if config.get("distill") else ""
    lines = [f"Up to {rounds} rounds of {config['epochs']} fine-tuning epochs (Adam, cosine from lr "
             f"{config['lr']:g}{distill}; gradual magnitude: as many steps as compress's rounds); Net-Trim's trims: "
             f"{' then '.join(stages)}, up to {config['rounds']} rounds each, cascade from g = {config['epsilon']:g}, "
             f"reweight {config['reweight']}, refit {'on' if config.get('refit') else 'off'}, "
             f"P = {config['samples']:,} calibration images; errors on the held-out 5,000 test images (validation "
             "half in brackets).", "",
             "| model | original | target | method | weights removed | held-out error | rounds kept | seconds |",
             "|---|---|---|---|---:|---:|---:|---:|"]
    for row in report["rows"]:
        history = row["nettrim"]["history"]["rounds"]
        kept = f"{sum(entry['accepted'] for entry in history)} of {len(history)}"
        widths = "-".join(map(str, row["nettrim"]["widths"])) if "widths" in row["nettrim"] else ""
        for method, label, kept_rounds in (("nettrim", f"Net-Trim compress {widths}".strip(), kept),
                                      ("gmp", "gradual magnitude", _steps(row["gmp"]))):
            result = row[method]
            lines.append(f"| {row['model']} | {row['original']['held_out_error']:.2%} "
                         f"| {config['models'][row['model']]['target_error']:.1%} | {label} "
                         f"| {result['sparsity']:.2%} | {result['held_out_error']:.2%} "
                         f"({result['validation_error']:.2%}) | {kept_rounds} | {result['seconds']:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = benchmark_parser(__doc__, "LeNet-300-100 (2 epochs), P = 600, 2 rounds of 1 epoch",
                              RESULTS / "schedules.json")
    parser.add_argument("--seed", type=int, default=0,
                        help="seeds training, calibration and batch order; a seed other than 0 adds _seedK to the "
                             "--refit and --distill file names")
    parser.add_argument("--models", nargs="+", choices=sorted(FULL["models"]), help="only these models")
    parser.add_argument("--progress", action="store_true", help="progress bars and a line per round")
    parser.add_argument("--tuning", action="store_true", help="the fine-tuning grid instead (results/tuning.*)")
    parser.add_argument("--refit", action="store_true",
                        help="compress with reweight=2, refit=True from g = 0.2, P = 2,000 (results/schedules_refit.*)")
    parser.add_argument("--distill", action="store_true",
                        help="neurons then weights, distilled, refit (results/schedules_distill.*)")
    args = parser.parse_args(argv)
    if args.tuning:
        report = tuning_grid(args.seed)
        write_results(args.out.with_name("tuning.json"), report, tuning_markdown(report))
        return report
    if args.distill:
        quick = {**QUICK, **{key: DISTILL[key] for key in ("refit", "distill", "structure")}}
        config = quick if args.quick else DISTILL
        out = args.out.with_name("schedules_distill.json")
    elif args.refit:
        config = {**QUICK, "refit": True} if args.quick else REFIT
        out = args.out.with_name("schedules_refit.json")
    else:
        config, out = QUICK if args.quick else FULL, args.out
    if out != args.out and args.seed:
        out = out.with_stem(f"{out.stem}_seed{args.seed}")
    if args.models:
        config = {**config, "models": {name: config["models"][name] for name in args.models
                                       if name in config["models"]}}
    report = run(config, args.seed, args.progress)
    write_results(out, report, markdown(report))
    return report


if __name__ == "__main__":
    main()
