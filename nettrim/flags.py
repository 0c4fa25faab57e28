"""The command line's trim and fine-tuning flags, defined once: `nettrim trim`, `compress` and `demo` each add
those they take (`add_flags`), with their own defaults where they differ."""

from __future__ import annotations

import argparse
from pathlib import Path

from .arguments import BUDGETS, MODES, RELU_PROGRAMS, STRUCTURES
from .compression import DEFAULT_FINETUNE
from .trim import DEFAULT_EPSILON


def _layer_epsilon(text: str) -> tuple[str, float]:
    name, separator, value = text.rpartition("=")
    if not separator or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=G (a layer name or regex and a relative budget), got {text!r}")
    try:
        return name, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number after '=', got {value!r}") from None


#: Every flag that sets a trim() argument, as argparse keywords: each command adds those it has (`add_flags`),
#: some with their own default.
TRIM_FLAGS = {
    "--epsilon": dict(type=float, default=DEFAULT_EPSILON, help="relative budget g: eps = g ||Y||_F per layer"),
    "--layer-epsilon": dict(type=_layer_epsilon, action="append", default=[], metavar="NAME=G",
                            help="per-layer g (name or regex); repeatable"),
    "--mode": dict(choices=MODES, default="cascade"),
    "--backend": dict(choices=("admm", "cvxpy"), default="admm"),
    "--device": dict(default="cpu", help="where the ADMM runs: cpu, cuda or cuda:K"),
    "--max-samples": dict(type=int, default=20_000, help="per-layer sample budget P"),
    "--reweight": dict(type=int, default=None,
                       help="rounds of reweighted l1 (sparser); default: 1 with a target sparsity, else 0"),
    "--structure": dict(choices=STRUCTURES, default="weights",
                        help="weights: scattered zeros; neurons: remove whole neurons and channels, and write a "
                             "smaller model"),
    "--refit": dict(action=argparse.BooleanOptionalAction, default=None,
                    help="fit the kept weights again by least squares (the zeros stay; the report gives each layer's "
                         "output error before and after); default: on with a target sparsity"),
    "--relu-program": dict(choices=RELU_PROGRAMS, default=None,
                           help="for layers followed by a ReLU: Net-Trim's relu program, or the pre-activation kept "
                                "within the budget; default: pre-activation with a target sparsity, else relu"),
    "--gather-inputs": dict(action="store_true",
                            help="with --structure neurons: the first layer reads only the inputs it still uses"),
    "--target-sparsity": dict(type=float, help="fraction of zero weights each layer must reach (its budget is "
                                               "found by a search)"),
    "--model-sparsity": dict(type=float, help="fraction of zero weights for the whole model, shared among the "
                                              "layers by the weights' saliencies and reached by each layer's own "
                                              "budget search"),
    "--max-epsilon": dict(type=float, default=1.0, help="the largest g a target may use"),
    "--max-iter": dict(type=int, help="ADMM iterations per layer (default 10,000)"),
    "--time-limit": dict(type=float, metavar="SECONDS",
                         help="seconds per layer; neurons not converged by then keep their original weights"),
    "--workers": dict(type=int, help="solve on a local pool of this many worker processes"),
    "--dask": dict(metavar="ADDRESS",
                   help="solve on the Dask cluster whose scheduler is at ADDRESS (pip install 'nettrim[dask]')"),
    "--block-size": dict(type=int, help="neurons per task with --workers or --dask"),
    "--layers": dict(nargs="+", help="names or regexes of the layers to trim (default all)"),
    "--exclude": dict(nargs="+", help="names or regexes of layers to leave alone"),
    "--relu-layers": dict(nargs="*", help="layers followed by a ReLU, for models torch.fx cannot trace "
                                          "(TorchScript); give the flag alone if there are none"),
    "--budget": dict(choices=BUDGETS, default="neuron"),
    "--gamma": dict(type=float, default=1.1, help="cascade slack factor (>= 1)"),
    "--kappa": dict(type=float, help="cascade factor for the last layer"),
    "--seed": dict(type=int, default=0, help="seeds the calibration subsample"),
    "--checkpoint": dict(type=Path, help="folder where each trimmed layer is kept until the trim ends (default "
                                         "OUT.partial): after Ctrl-C or a crash, the same command resumes after "
                                         "those layers"),
}
#: The flags of one trim that `trim` and `demo` share, and those `trim` adds.
RUN_FLAGS = ("--epsilon", "--mode", "--backend", "--device", "--max-samples", "--reweight", "--structure", "--refit",
             "--relu-program", "--gather-inputs", "--target-sparsity", "--model-sparsity", "--max-epsilon",
             "--max-iter", "--time-limit", "--workers", "--dask", "--block-size")
MODEL_FLAGS = ("--layer-epsilon", "--layers", "--exclude", "--relu-layers", "--budget", "--gamma", "--kappa", "--seed",
               "--checkpoint")


#: The fine-tuning flags of `compress` (each round's masked fine-tuning: nettrim.finetune).
TUNING_FLAGS = {
    "--epochs": dict(type=int, default=DEFAULT_FINETUNE["epochs"], help="fine-tuning epochs a round"),
    "--lr": dict(type=float, default=DEFAULT_FINETUNE["lr"], help="fine-tuning learning rate"),
    "--batch-size": dict(type=int, default=128, help="fine-tuning batch size"),
    "--distill": dict(type=float, default=0.0, metavar="WEIGHT",
                      help="fine-tune by distillation from the original model with this weight in [0, 1] on it (for "
                           "class logits; 0.9 reached docs/compress.md's sparsest schedules; default 0: off)"),
    "--renormalize": dict(action="store_true", help="fine-tune with a batch normalization after every convolution, "
                                                    "folded back at the end (for networks whose BatchNorm the trim "
                                                    "folds away)"),
    "--mixup": dict(type=float, default=0.0, metavar="ALPHA",
                    help="fine-tune on mixed pairs of inputs, their weights drawn from Beta(ALPHA, ALPHA) (default 0: "
                         "off)"),
}


def add_flags(parser: argparse.ArgumentParser, names, table: dict = TRIM_FLAGS, **changed: dict) -> None:
    """Add the flags `names` of `table` (TRIM_FLAGS or TUNING_FLAGS) to `parser`; changed["--flag-name" as
    flag_name] updates a flag's keywords. A help text gets the default appended."""
    for name in names:
        options = {**table[name], **changed.get(name.lstrip("-").replace("-", "_"), {})}
        if options.get("default") not in (None, [], False) and "help" in options:
            options["help"] += f" (default {options['default']})"
        parser.add_argument(name, **options)
