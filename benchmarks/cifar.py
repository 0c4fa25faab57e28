"""Net-Trim on a network nobody here trained: the CIFAR-10 ResNet-20 of ../shared/models/cifar10-resnet20 (He et
al. 2016, option-A shortcuts), calibrated on training images, measured on the 1,017 test images.

The 5,085 training images are split once (seeded): `validation` images for every choice, `calibration` images of
the rest for the trims and the peers, and the rest with the calibration images for fine-tuning. Sections (their
settings are the FULL and QUICK configurations):

- oneshot: trim(model, calibration, model_sparsity=s) with the defaults at every s in `sparsities`, and VARIANTS at
  `variant_sparsity`, one ingredient changed each; magnitude, Wanda and SparseGPT (benchmarks/peers.py) at exactly
  the default trim's per-layer nonzeros, each layer on the already pruned network's inputs, and SparseGPT at a
  uniform per-layer sparsity. Every model is also scored after BatchNorm recalibration (`recalibrated`).
- finetune: at every `finetune_sparsities`, the default trim then masked fine-tuning (distillation from the dense
  model, random crops and flips, finetune's `tuning` options: the BatchNorm put back while training and mixup; the
  epoch with the best validation accuracy kept), without each ingredient of `tuning_variants` at the first
  sparsity, against gradual magnitude pruning (Zhu and Gupta 2017: sparsity s (1 - (1 - t/T)^3) over the first
  PRUNING_SHARE of the epochs, each layer toward the trim's nonzeros) with the same fine-tuning. The fine-tuning is
  one finetune call (the BatchNorm put back lives through all epochs); gradual pruning's pruning epochs are a
  call each, as the weights change between them, and the rest one call.
- robustness: whole trims at every g in `g_grid` and every per-layer target sparsity in `target_grid`, in both
  modes, with `robustness_samples` samples per layer and the defaults otherwise: each layer's status, dense
  fallbacks, the slowest layer and the whole trim's seconds.

Accuracy is on the 1,017 test images with its binomial standard error sqrt(a (1 - a) / n); each method is also
compared with the default trim on the same images: the images only one of the two gets right, and McNemar's
z = (only Net-Trim - only the other) / sqrt(their sum), positive where the default trim is better.

    python -m benchmarks.cifar [--quick] [--sections oneshot finetune robustness]

A run of some sections keeps the other sections of an earlier report at --out made with the same settings.
"""

from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional

import nettrim
from benchmarks.compression import magnitude_pruned
from benchmarks.peers import pruned_sequentially, sparsegpt, wanda
from benchmarks.results_files import benchmark_parser, machine, write_results
from nettrim.arguments import MODES
from nettrim.datasets import load_cifar10
from nettrim.graph import fold_batchnorm, trace_layers
from nettrim.layers import select_layers
from nettrim.zoo import CifarResNet, cifar_resnet20

SHARED = Path(__file__).resolve().parents[2] / "shared"
DATA = SHARED / "data" / "cifar10"
WEIGHTS = SHARED / "models" / "cifar10-resnet20" / "resnet20-12fca82f.th"
FULL = {"validation": 1000, "calibration": 500, "max_samples": 20_000, "robustness_samples": 5000,
        "g_grid": [0.01, 0.05, 0.2, 0.5], "target_grid": [0.5, 0.7, 0.9, 0.95],
        "sparsities": [0.5, 0.7, 0.8, 0.9], "variant_sparsity": 0.7,
        "variants": ["parallel", "refit off", "no reweighting", "uniform shares"],
        "finetune_sparsities": [0.9, 0.95], "epochs": 30, "lr": 1e-3, "batch": 128,
        "tuning": {"renormalize": True, "mixup": 1.0, "distill": 1.0},
        "tuning_variants": ["no renormalization", "no mixup", "neither, distill 0.9"]}
QUICK = {"validation": 40, "calibration": 16, "max_samples": 400, "robustness_samples": 400, "blocks": 1,
         "g_grid": [0.05], "target_grid": [], "sparsities": [0.7], "variant_sparsity": 0.7,
         "variants": ["parallel"], "finetune_sparsities": [0.9], "epochs": 1, "lr": 1e-3,
         "batch": 32, "tuning": {"renormalize": True, "mixup": 1.0, "distill": 1.0}, "tuning_variants": ["no mixup"]}
#: The default trim's variants at model sparsity s: one ingredient changed at a time.
VARIANTS = {"parallel": lambda s: {"model_sparsity": s, "mode": "parallel"},
            "refit off": lambda s: {"model_sparsity": s, "refit": False},
            "no reweighting": lambda s: {"model_sparsity": s, "reweight": 0},
            "relu program": lambda s: {"model_sparsity": s, "relu_program": "relu"},
            "uniform shares": lambda s: {"target_sparsity": s}}
#: The fine-tuning's variants at the first finetune_sparsities: config's tuning with ingredients removed.
TUNING_VARIANTS = {"no renormalization": {"renormalize": False}, "no mixup": {"mixup": 0.0},
                   "neither, distill 0.9": {"renormalize": False, "mixup": 0.0, "distill": 0.9}}
PEERS = {"SparseGPT": sparsegpt, "Wanda": wanda}
SECTIONS = ("oneshot", "finetune", "robustness")
#: The settings each section reads: an earlier report's section is kept when these are unchanged.
SECTION_SETTINGS = {
    "oneshot": ("validation", "calibration", "max_samples", "sparsities", "variant_sparsity", "variants"),
    "finetune": ("validation", "calibration", "max_samples", "finetune_sparsities", "epochs", "lr", "batch",
                 "tuning", "tuning_variants"),
    "robustness": ("validation", "calibration", "robustness_samples", "g_grid", "target_grid")}
#: The least share of a channel's reference spread that recalibration rescales (`recalibrated`).
SPREAD_KEPT = 1e-3
#: The share of the fine-tuning epochs over which gradual magnitude pruning raises its sparsity.
PRUNING_SHARE = 2 / 3


def split(labels: np.ndarray, config: dict, seed: int = 0) -> dict[str, np.ndarray]:
    """Indices of the training images: validation, calibration, and tuning (everything but validation)."""
    order = np.random.default_rng(seed).permutation(len(labels))
    validation, rest = order[:config["validation"]], order[config["validation"]:]
    return {"validation": validation, "calibration": rest[:config["calibration"]], "tuning": rest}


def folded(model: nn.Module) -> nn.Module:
    """A copy of `model` with its BatchNorms folded into the convolutions before them (what trim works on)."""
    work = copy.deepcopy(model).eval()
    graph = trace_layers(work, [layer.name for layer in select_layers(work)])
    fold_batchnorm(work, graph.batchnorm)
    return work


def recalibrated(model: nn.Module, reference: nn.Module, images: torch.Tensor) -> nn.Module:
    """A copy of `model` whose convolutions' outputs get, channel by channel, the mean and standard deviation of the
    same convolution's outputs in `reference` on `images`, in execution order (each on the corrected layers before
    it): for a network whose BatchNorms are folded into its convolutions, re-estimating their statistics. Output
    o of a channel becomes (o - mean) std_ref / std + mean_ref: its weights scale by std_ref / std, its bias moves;
    a channel left with less than SPREAD_KEPT of its reference spread (pruned empty, or dead in both) is only
    shifted (a ratio of two near-zero spreads is noise)."""
    model = copy.deepcopy(model).eval()
    convs = [(layer.name, layer.module) for layer in select_layers(model) if isinstance(layer.module, nn.Conv2d)]
    for name, conv in convs:
        mean, std = _channel_moments(model, name, images)
        mean_ref, std_ref = _channel_moments(reference, name, images)
        scale = torch.where(std > SPREAD_KEPT * std_ref, std_ref / std.clamp_min(1e-30), 1.0)
        with torch.no_grad():
            bias = conv.bias if conv.bias is not None else torch.zeros(conv.out_channels)
            conv.weight.mul_(scale[:, None, None, None])
            conv.bias = nn.Parameter((bias - mean) * scale + mean_ref)
    return model


def _channel_moments(model: nn.Module, name: str, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    captured = []
    handle = model.get_submodule(name).register_forward_hook(lambda module, x, out: captured.append(out))
    try:
        with torch.no_grad():
            model(images)
    finally:
        handle.remove()
    out = captured[0].transpose(0, 1).flatten(1)
    return out.mean(dim=1), out.std(dim=1)


def scored(model: nn.Module, data: dict, reference: nn.Module) -> dict:
    """Accuracy on the validation and test images, as is and after recalibration, and the test predictions."""
    out = {}
    for suffix, candidate in (("", model), (" recalibrated", recalibrated(model, reference, data["calibration"]))):
        with torch.no_grad():
            candidate.eval()
            validation = candidate(data["validation"]).argmax(1).numpy()
            test = candidate(data["test"]).argmax(1).numpy()
        out[f"validation{suffix}"] = float(np.mean(validation == data["validation_labels"]))
        out[f"test{suffix}"] = float(np.mean(test == data["test_labels"]))
        out[f"predictions{suffix}"] = test
    return out


def binomial_error(accuracy: float, n: int) -> float:
    return math.sqrt(accuracy * (1 - accuracy) / n)


def paired(ours: np.ndarray, theirs: np.ndarray, labels: np.ndarray) -> dict:
    """The test images only ours / only theirs classify right, and McNemar's z = (b - c) / sqrt(b + c)."""
    only_ours = int(np.sum((ours == labels) & (theirs != labels)))
    only_theirs = int(np.sum((ours != labels) & (theirs == labels)))
    z = (only_ours - only_theirs) / math.sqrt(only_ours + only_theirs) if only_ours + only_theirs else 0.0
    return {"only_nettrim": only_ours, "only_peer": only_theirs, "z": round(z, 2)}


def nonzeros(model: nn.Module) -> dict[str, int]:
    """Each layer's nonzero entries of W (weights and the bias row), the count peers are pruned to."""
    return {layer.name: int(np.count_nonzero(layer.weight_matrix())) for layer in select_layers(model)}


def weight_sparsity(model: nn.Module) -> float:
    """The fraction of zero weights over every conv and linear layer (biases apart)."""
    weights = [layer.module.weight.detach() for layer in select_layers(model)]
    return float(sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights))


def robustness(model: nn.Module, data: dict, config: dict) -> list[dict]:
    """Whole trims over config's g_grid budgets and target_grid per-layer sparsities, in both modes."""
    rows = []
    settings = [{"epsilon": g} for g in config["g_grid"]] + [{"target_sparsity": t} for t in config["target_grid"]]
    for mode in MODES:
        for setting in settings:
            trimmed, report = nettrim.trim(model, data["calibration"], mode=mode,
                                           max_samples=config["robustness_samples"], progress=False, **setting)
            statuses = [row.status for row in report.layers]
            slowest = max(report.layers, key=lambda row: row.seconds)
            with torch.no_grad():
                test = float(np.mean(trimmed(data["test"]).argmax(1).numpy() == data["test_labels"]))
            rows.append({"mode": mode, **setting, "sparsity": round(weight_sparsity(trimmed), 4),
                         "optimal": statuses.count("optimal"), "layers": len(statuses),
                         "other_statuses": {s: statuses.count(s) for s in sorted(set(statuses)) if s != "optimal"},
                         "dense_fallback": sum(row.dense_fallback for row in report.layers),
                         "slowest_layer": slowest.name, "slowest_seconds": round(slowest.seconds, 1),
                         "capture_seconds": round(sum(row.capture_seconds for row in report.layers), 1),
                         "seconds": round(report.seconds, 1), "test": test})
            print("robustness", rows[-1], flush=True)
    return rows


def oneshot(model: nn.Module, data: dict, config: dict) -> list[dict]:
    """The default trim at every sparsity, its variants, and the peers at its per-layer nonzeros."""
    reference = folded(model)
    rows = []
    for target in config["sparsities"]:
        first = len(rows)
        default = _trim_row(model, data, reference, config, "Net-Trim", target, model_sparsity=target)
        rows.append(default)
        if target == config["variant_sparsity"]:
            rows += [_trim_row(model, data, reference, config, f"Net-Trim, {name}", target, **options(target))
                     for name, options in VARIANTS.items() if name in config["variants"]]
        for name, prune in [("magnitude", None), *PEERS.items()]:
            start = time.perf_counter()
            pruned = (magnitude_pruned(reference, default["layer_nonzeros"]) if prune is None else
                      pruned_sequentially(reference, data["calibration"], default["layer_nonzeros"], prune,
                                          config["max_samples"]))
            rows.append(_row(name, target, time.perf_counter() - start, pruned, data, reference))
        uniform = {layer.name: _uniform_nonzeros(layer, target) for layer in select_layers(reference)}
        start = time.perf_counter()
        pruned = pruned_sequentially(reference, data["calibration"], uniform, sparsegpt, config["max_samples"])
        rows.append(_row("SparseGPT, uniform", target, time.perf_counter() - start, pruned, data, reference))
        for row in rows[first + 1:]:
            row["paired"] = {suffix: paired(default[f"predictions{suffix}"], row[f"predictions{suffix}"],
                                            data["test_labels"]) for suffix in ("", " recalibrated")}
    return rows


def _trim_row(model, data, reference, config, method, target, **options) -> dict:
    start = time.perf_counter()
    trimmed, report = nettrim.trim(model, data["calibration"], max_samples=config["max_samples"], progress=False,
                                   **options)
    row = _row(method, target, time.perf_counter() - start, trimmed, data, reference)
    row["statuses"] = sorted({layer.status for layer in report.layers})
    row["layers"] = [{"name": layer.name, "kept": round(layer.kept, 4), "g": layer.g, "status": layer.status,
                      "seconds": round(layer.seconds, 1), "capture_seconds": round(layer.capture_seconds, 1)}
                     for layer in report.layers]
    return row


def _uniform_nonzeros(layer, target: float) -> int:
    W = layer.weight_matrix()
    weights = W.size - layer.has_bias * W.shape[1]
    return round((1 - target) * weights) + layer.has_bias * W.shape[1]


def _row(method: str, target: float, seconds: float, model: nn.Module, data: dict, reference: nn.Module) -> dict:
    row = {"method": method, "target": target, "sparsity": round(weight_sparsity(model), 4),
           "seconds": round(seconds, 1), "layer_nonzeros": nonzeros(model), **scored(model, data, reference)}
    row["test_se"] = round(binomial_error(row["test"], len(data["test_labels"])), 4)
    print(method, target, {key: value for key, value in row.items() if key in ("sparsity", "seconds", "test",
                                                                            "test recalibrated", "validation")},
          flush=True)
    return row


class Augmented:
    """Batches (x, y) of `images`, reshuffled on every pass, each image shifted by up to 4 pixels (zero padding)
    and flipped left-right half the time (He et al. 2016's augmentation); seeded."""

    def __init__(self, images: torch.Tensor, labels: np.ndarray, batch: int, seed: int = 0):
        self.images, self.labels, self.batch = images, torch.from_numpy(labels), batch
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return math.ceil(len(self.images) / self.batch)

    def __iter__(self):
        count, side = len(self.images), self.images.shape[-1]
        padded = functional.pad(self.images, (4, 4, 4, 4))
        shifts = torch.randint(0, 9, (count, 2), generator=self.generator).tolist()
        flips = (torch.rand(count, generator=self.generator) < 0.5).tolist()
        for chosen in torch.randperm(count, generator=self.generator).split(self.batch):
            crops = []
            for index in chosen.tolist():
                (top, left), image = shifts[index], padded[index]
                crop = image[:, top:top + side, left:left + side]
                crops.append(crop.flip(-1) if flips[index] else crop)
            yield torch.stack(crops), self.labels[chosen]


def finetuning(model: nn.Module, data: dict, config: dict) -> list[dict]:
    """The default trim then fine-tuning, against gradual magnitude pruning to its per-layer nonzeros with the
    same fine-tuning (module docstring), at every config's finetune_sparsities."""
    reference = folded(model)
    teacher = copy.deepcopy(reference).requires_grad_(False)
    rows = []
    for target in config["finetune_sparsities"]:
        start = time.perf_counter()
        trimmed, _ = nettrim.trim(model, data["calibration"], model_sparsity=target,
                                  max_samples=config["max_samples"], progress=False)
        counts, seconds = nonzeros(trimmed), time.perf_counter() - start
        variants = config["tuning_variants"] if target == config["finetune_sparsities"][0] else []
        tuned_rows = []
        for variant in [None, *variants]:
            start = time.perf_counter()
            tuning = {**config["tuning"], **TUNING_VARIANTS.get(variant, {})}
            tuned = _tuned(trimmed, data, config, teacher, tuning)
            row = _row("Net-Trim + fine-tuning" + (f", {variant}" if variant else ""), target,
                       seconds + time.perf_counter() - start, tuned, data, reference)
            if tuned_rows:
                row["paired"] = _paired(tuned_rows[0], row, data)
            tuned_rows.append(row)
        rows += tuned_rows
        start = time.perf_counter()
        gradual = _tuned(reference, data, config, teacher, config["tuning"], counts)
        rows.append(_row("gradual magnitude + fine-tuning", target, time.perf_counter() - start, gradual, data,
                         reference))
        rows[-1]["paired"] = _paired(tuned_rows[0], rows[-1], data)
    return rows


def _paired(ours: dict, theirs: dict, data: dict) -> dict:
    """paired() of two rows' test predictions, as scored and after recalibration."""
    return {suffix: paired(ours[f"predictions{suffix}"], theirs[f"predictions{suffix}"], data["test_labels"])
            for suffix in ("", " recalibrated")}


def _tuned(model: nn.Module, data: dict, config: dict, teacher: nn.Module, tuning: dict,
           counts: dict[str, int] | None = None) -> nn.Module:
    """`model` fine-tuned for config's epochs (Adam, lr cosine-decayed, distillation from `teacher`, finetune's
    `tuning` options), keeping the epoch most accurate on the validation images. With `counts`, gradual magnitude
    pruning toward them first: before each of the pruning epochs (_gradual), each epoch its own finetune call;
    the epochs after them, as all epochs without counts, are one call (the BatchNorm put back lives through it)."""
    current, epochs = copy.deepcopy(model), config["epochs"]
    loader = Augmented(data["tuning"], data["tuning_labels"], config["batch"])
    pruning = 0 if counts is None else _pruning_epochs(config)
    for epoch in range(pruning):
        current = magnitude_pruned(current, _gradual(counts, model, epoch, config))
        nettrim.finetune(current, loader, epochs=1, lr=_cosine(config["lr"], epoch, epochs), teacher=teacher,
                         progress=False, **tuning)
    if pruning == epochs:
        return current.eval()
    validation = [(data["validation"], torch.as_tensor(data["validation_labels"]))]
    return nettrim.finetune(current, loader, epochs=epochs - pruning, lr=_cosine(config["lr"], pruning, epochs),
                            schedule="cosine", teacher=teacher, validation=validation, progress=False,
                            **tuning).eval()


def _cosine(lr: float, epoch: int, epochs: int) -> float:
    """The learning rate lr (1 + cos(pi epoch / epochs)) / 2 of a cosine decay at the start of `epoch`."""
    return lr * (1 + math.cos(math.pi * epoch / epochs)) / 2


def _pruning_epochs(config: dict) -> int:
    """The epochs over which gradual magnitude pruning raises its sparsity: PRUNING_SHARE of them, at least one."""
    return max(1, round(PRUNING_SHARE * config["epochs"]))


def _gradual(final: dict[str, int], reference: nn.Module, epoch: int, config: dict) -> dict[str, int]:
    """Each layer's nonzeros at `epoch`: from its dense count toward `final` along 1 - (1 - t/T)^3, T the pruning
    epochs (the last pruning epoch reaches `final`)."""
    steps = _pruning_epochs(config)
    progress = 1 - (1 - min(epoch + 1, steps) / steps) ** 3
    dense = {layer.name: layer.weight_matrix().size for layer in select_layers(reference)}
    return {name: round(dense[name] - progress * (dense[name] - count)) for name, count in final.items()}


def prepared(config: dict, data_folder: Path, weights: Path | None) -> tuple[nn.Module, dict]:
    """The model (when `weights` is None, random weights with config's blocks per stage: the quick mode's stand-in)
    and the images as tensors."""
    torch.manual_seed(0)
    model = cifar_resnet20(weights) if weights is not None else CifarResNet(config.get("blocks", 3)).eval()
    train_images, train_labels = load_cifar10(data_folder / "cifar10_train_prefix.npz")
    test_images, test_labels = load_cifar10(data_folder / "cifar10_test_prefix.npz")
    parts = split(train_labels, config)
    data = {"test": torch.from_numpy(test_images), "test_labels": test_labels}
    for name, indices in parts.items():
        data[name] = torch.from_numpy(train_images[indices])
        data[f"{name}_labels"] = train_labels[indices]
    return model, data


def markdown(report: dict) -> str:
    """The one-shot and fine-tuning rows as a table, then the robustness rows."""
    lines = [f"Dense ResNet-20: {report['dense']['test']:.2%} on the {report['dense']['test_images']} test images.",
             "", "| method | target | sparsity | test | ± | recalibrated | vs Net-Trim (z) | seconds |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in report.get("oneshot", []) + report.get("finetune", []):
        z = row.get("paired", {}).get("", {}).get("z", "")
        lines.append(f"| {row['method']} | {row['target']:.0%} | {row['sparsity']:.1%} | {row['test']:.2%} | "
                     f"{row['test_se']:.2%} | {row['test recalibrated']:.2%} | {z} | {row['seconds']:.0f} |")
    if report.get("robustness"):
        lines += ["", "| mode | setting | sparsity | optimal | other layers | dense fallback | slowest layer (s) | "
                  "trim (s) | test |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for row in report["robustness"]:
            setting = f"g = {row['epsilon']}" if "epsilon" in row else f"target {row['target_sparsity']}"
            others = ", ".join(f"{count} {status}" for status, count in dict(row["other_statuses"]).items())
            lines.append(f"| {row['mode']} | {setting} | {row['sparsity']:.1%} | {row['optimal']}/{row['layers']} | "
                         f"{others} | {row['dense_fallback']} | {row['slowest_seconds']} | {row['seconds']} | "
                         f"{row['test']:.2%} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = benchmark_parser(__doc__, "a few images and one setting per section",
                              Path("benchmarks/results/cifar.json"))
    parser.add_argument("--data", type=Path, default=DATA, help="the folder of the CIFAR-10 .npz archives")
    parser.add_argument("--weights", type=Path, default=WEIGHTS, help="the ResNet-20 checkpoint ('none': random)")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    args = parser.parse_args(argv)
    config = QUICK if args.quick else FULL
    model, data = prepared(config, args.data, None if str(args.weights) == "none" else args.weights)
    with torch.no_grad():
        dense = float(np.mean(model(data["test"]).argmax(1).numpy() == data["test_labels"]))
    report = {"config": config, "machine": machine(), "dense": {"test": dense, "test_images": len(data["test"])},
              **_earlier_sections(args.out, config, args.sections)}
    for section, run in zip(SECTIONS, (oneshot, finetuning, robustness), strict=True):
        if section in args.sections:
            report[section] = run(model, data, config)
            write_results(args.out, _saved(report), markdown(report))
    return _saved(report)


def _earlier_sections(out: Path, config: dict, sections: list[str]) -> dict:
    """The sections not run now from an earlier report at `out` whose SECTION_SETTINGS equal config's (none if
    there is none), so that one section can be re-run without the others."""
    if not out.exists():
        return {}
    earlier = json.loads(out.read_text())
    settings = earlier.get("config", {})
    return {section: earlier[section] for section in SECTIONS if section not in sections and section in earlier
            and all(settings.get(key) == config.get(key) for key in SECTION_SETTINGS[section])}


def _saved(report: dict) -> dict:
    """The report without the test predictions (kept in memory for the paired comparisons)."""
    def without(row: dict) -> dict:
        return {key: value for key, value in row.items() if not key.startswith("predictions")}

    return {key: [without(row) for row in value] if key in SECTIONS else value for key, value in report.items()}


if __name__ == "__main__":
    main()
