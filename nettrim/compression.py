"""Accuracy-aware compression: rounds of Net-Trim alternated with masked fine-tuning.

Round k trims the current model at budget g_k (cascade mode by default, so the budget is the first layer's and the
later ones inherit it), fine-tunes the trimmed model with its zeros fixed (nettrim/finetune.py), and scores it with
the user's metric. The round is accepted when

    metric(candidate) >= metric(original) - max_drop   and   sparsity(candidate) > sparsity(current),

and the next round trims the candidate at g_{k+1} = grow g_k (capped at max_epsilon). A rejected candidate is
dropped and the next round trims the current model again at g_{k+1} = g_k / 2. Each round's budget is relative
to the current model's own responses, so accepted rounds compound: the trimmed model drifts from the original
by more than any single eps, and fine-tuning pulls it back towards the task. The guarantee a user gets is the
metric's, measured by `evaluate` on their data after every round; the sparsest accepted model is returned.

Backtracking. A model accepted with its metric at the threshold leaves no slack: every candidate trimmed from it
falls short by the noise of one fine-tuning and one evaluation, and halving g again and again only repeats that.
So after RETRIES rejected rounds in a row from a kept model, or one rejected candidate no sparser than it
(smaller budgets would remove even less), the descent steps back to the model the current one was trimmed from,
which had more slack, and trims that one at half the budget that led from it to the current model (a later
stage steps back into the earlier ones' models too: the weights stage can thin a model with more neurons left
when the sparsest one has no slack left). The current model stays a candidate for the result (the sparsest
accepted). The original model is never left: its rejected candidates halve g until one is no sparser than it,
which ends the stage, as do `rounds` rounds.

With structure a sequence of stages, e.g. ("neurons", "weights"), the rounds run stage after stage (up to
`rounds` each, every stage starting again at the first g) on the model the previous stage kept, all judged
against the original's metric: first whole neurons go, then scattered weights of the smaller model.

Sparsity is the fraction of the original model's selected weights and biases (Report.weights) that are gone:
zero, or, with structure="neurons" (each round's trim removes whole neurons and channels and returns a smaller
model), no longer there. The caller's own zeros count, so a model that arrives sparse is only replaced by a
sparser one.

With distill > 0 the fine-tuning distills from the original model (finetune's teacher): every round's
candidate is pulled towards the dense model's output distribution rather than only its labels, which is what
lets the rounds go further (docs/compress.md has the measurements).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
import warnings
from collections.abc import Callable, Iterable, Sequence

import numpy as np
from torch import nn

from .arguments import STRUCTURES
from .finetune import SCHEDULES, check_distill, check_mixing, finetune
from .layers import select_layers
from .trim import trim

DEFAULT_FINETUNE = {"epochs": 3, "lr": 1e-3, "schedule": "cosine"}
#: Rejected rounds in a row from one model before the descent steps back to the model it was trimmed from.
RETRIES = 2


@dataclasses.dataclass
class Round:
    """One round: the budget g it trimmed at, the candidate's sparsity and metric, whether it was kept (within
    max_drop and sparser than the model it trimmed), its structure ("weights" or "neurons"), the round whose kept
    model it trimmed (`source`, counting from 1; 0: the original model); for "neurons" also the candidate's
    layer widths (output neurons or channels)."""

    epsilon: float
    sparsity: float
    metric: float
    accepted: bool
    trim_seconds: float
    finetune_seconds: float
    evaluate_seconds: float
    widths: dict[str, int] | None = None
    structure: str = "weights"
    source: int = 0


@dataclasses.dataclass
class History:
    """The original model's metric and sparsity, the allowed drop, and every round in order."""

    original_metric: float
    original_sparsity: float
    max_drop: float
    rounds: list[Round] = dataclasses.field(default_factory=list)

    @property
    def best(self) -> Round | None:
        """The sparsest accepted round (the first of equals), or None when no round was accepted."""
        accepted = [entry for entry in self.rounds if entry.accepted]
        return max(accepted, key=lambda entry: entry.sparsity) if accepted else None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        lines = [f"original: metric {self.original_metric:.4g}, sparsity {self.original_sparsity:.1%}; "
                 f"allowed drop {self.max_drop:g}",
                 "| round | from | g | sparsity | metric | kept | trim s | fine-tune s |",
                 "|---|---|---|---|---|---|---|---|"]
        for index, entry in enumerate(self.rounds, start=1):
            widths = f" (widths {'-'.join(map(str, entry.widths.values()))})" if entry.widths else ""
            lines.append(f"| {index} | {entry.source} | {entry.epsilon:.4g} | {entry.sparsity:.2%}{widths} "
                         f"| {entry.metric:.4g} | {'yes' if entry.accepted else 'no'} | {entry.trim_seconds:.0f} "
                         f"| {entry.finetune_seconds:.0f} |")
        return "\n".join(lines)


class CompressInterrupted(KeyboardInterrupt):
    """Ctrl-C during compress(): `model` is the sparsest model accepted so far (a copy; the caller's model is
    untouched) and `history` the rounds finished."""

    def __init__(self, model: nn.Module, history: History):
        super().__init__(f"compress interrupted after {len(history.rounds)} rounds")
        self.model, self.history = model, history


def compress(model: nn.Module, calibration, train_data: Iterable, *, evaluate: Callable[[nn.Module], float],
             max_drop: float, epsilon: float = 0.1, rounds: int = 8, grow: float = 1.5, max_epsilon: float = 0.5,
             reweight: int = 2, structure: str | Sequence[str] = "weights", epochs: int = DEFAULT_FINETUNE["epochs"],
             lr: float = DEFAULT_FINETUNE["lr"], schedule: str = DEFAULT_FINETUNE["schedule"], loss=None,
             distill: float = 0.0, renormalize: bool = False, mixup: float = 0.0, progress: bool = True,
             **trim_options) -> tuple[nn.Module, History]:
    """The sparsest model within `max_drop` of the original's metric, from `rounds` rounds of trim and fine-tune.

    train_data: an iterable of (x, y) batches, re-iterated every epoch (a DataLoader); loss(output, y) defaults
                to cross-entropy. epochs, lr and schedule: each round's masked fine-tuning (Adam; the cosine
                decay restarts every round; docs/compress.md says how the defaults were
                chosen).
    distill:    the weight in [0, 1] of distillation from the original model in every fine-tuning (finetune's
                teacher and distill; 0: off). For models whose outputs are class logits; 0.9 is what the schedules
                of docs/compress.md reached their sparsest with.
    renormalize, mixup: finetune's (a batch normalization after every convolution while fine-tuning, folded back;
                mixed inputs), for convolutional networks whose BatchNorm the trims fold away
                (docs/cifar-resnet20.md measures both).
    evaluate:   evaluate(model) -> float, the user's metric on their own validation data, higher is better; it
                gets the model in eval mode.
    max_drop:   the metric's allowed drop from the original model's (e.g. 0.005 for half a point of accuracy).
    epsilon, grow, max_epsilon: the first round's g, its factor after an accepted round (halved after a rejected
                one), and its cap.
    reweight:   reweighting rounds of every trim (sparser at the same budget; docs/compress.md has the
                measurements; 0 for plain l1, 3 to 5 times faster).
    structure:  "weights" (scattered zeros) or "neurons": every round removes whole neurons and channels, and
                the model returned is physically smaller (trim's structure="neurons"); or a sequence of them,
                stages of up to `rounds` rounds each (module docstring): ("neurons", "weights") reached the sparsest
                LeNet-300-100 of docs/compress.md.
    trim_options: go to every trim (mode defaults to "cascade"; layers, exclude, max_samples, workers, ...;
                not inplace).

    Returns (model, History). The model is a copy (the caller's stays untouched, also on errors and Ctrl-C,
    which raises CompressInterrupted holding the best model so far), in the caller's model's training mode;
    when no round is accepted it is an unchanged copy of the original.
    """
    _check_arguments(evaluate, max_drop, epsilon, rounds, grow, max_epsilon, epochs, lr, schedule, trim_options,
                     train_data)
    check_distill(distill)
    check_mixing(renormalize, mixup)
    stages = _stages(structure)
    if trim_options.get("gather_inputs") and "neurons" not in stages:
        raise ValueError(f"gather_inputs: True only with a 'neurons' stage, got structure={structure!r}")
    trim_options = {"mode": "cascade", "reweight": reweight, "progress": progress, **trim_options}
    selection = {key: trim_options.get(key) for key in ("layers", "exclude")}
    selection["total"] = weight_count(model, **selection)
    original = copy.deepcopy(model)
    history = History(_scored(evaluate, original), sparsity(original, **selection), max_drop)
    tuning = dict(epochs=epochs, lr=lr, schedule=schedule, loss=loss, renormalize=renormalize, mixup=mixup,
                  progress=progress)
    if distill:
        tuning.update(teacher=copy.deepcopy(model).requires_grad_(False), distill=distill)
    descent = _Descent(calibration, train_data, evaluate, selection, tuning, history, epsilon, rounds, grow,
                       max_epsilon, progress, _Kept(original, history.original_sparsity, 0, epsilon))
    try:
        for stage in stages:
            descent.stage(stage, _stage_options(trim_options, stage))
    except KeyboardInterrupt as interrupt:
        raise CompressInterrupted(descent.best.model.train(model.training), history) from interrupt
    return descent.best.model.train(model.training), history


@dataclasses.dataclass
class _Descent:
    """compress's rounds: what they share, and `best`, the sparsest model kept so far (module docstring)."""

    calibration: object
    train_data: Iterable
    evaluate: Callable[[nn.Module], float]
    selection: dict
    tuning: dict
    history: History
    epsilon: float
    rounds: int
    grow: float
    max_epsilon: float
    progress: bool
    best: _Kept

    def stage(self, stage: str, options: dict) -> None:
        """Up to `rounds` rounds with the stage's trim options, descending from the best model so far: g grows
        after an accepted round and halves after a rejected one, back to the parent after RETRIES rejections."""
        current, g, rejected = self.best, self.epsilon, 0  # the model the descent trims; its parents the way back
        for _ in range(self.rounds):
            candidate, entry = _round(current.model, self.calibration, self.train_data, self.evaluate, g,
                                      self.selection, options, self.tuning)
            entry.source = current.round
            entry.accepted = (entry.metric >= self.history.original_metric - self.history.max_drop
                              and entry.sparsity > current.sparsity)
            self.history.rounds.append(entry)
            if self.progress:
                print(f"compress: round {len(self.history.rounds)} ({stage}) from round {current.round}, g = {g:.4g}: "
                      f"sparsity {entry.sparsity:.2%}, metric {entry.metric:.4g} "
                      f"({'kept' if entry.accepted else 'dropped'})", flush=True)
            if entry.accepted:
                current = _Kept(candidate, entry.sparsity, len(self.history.rounds), g, current)
                self.best = max(self.best, current, key=lambda kept: kept.sparsity)
                g, rejected = min(g * self.grow, self.max_epsilon), 0
                continue
            rejected += 1
            if entry.sparsity > current.sparsity and (rejected < RETRIES or current.parent is None):
                g /= 2
            elif current.parent is not None:  # back to the model it was trimmed from (module docstring)
                current, g, rejected = current.parent, current.epsilon / 2, 0
            else:
                return  # no sparser than the original model: smaller budgets would remove even less


@dataclasses.dataclass
class _Kept:
    """A model the descent kept: its sparsity, the round that produced it (0: the original), that round's g and
    the kept model it trimmed (None for the original)."""

    model: nn.Module
    sparsity: float
    round: int
    epsilon: float
    parent: _Kept | None = None


def _round(current: nn.Module, calibration, train_data, evaluate, g: float, selection: dict, trim_options: dict,
           tuning: dict) -> tuple[nn.Module, Round]:
    """Trim `current` at g, fine-tune the result, score it; the round is not yet judged (accepted=False)."""
    start = time.perf_counter()
    candidate, report = trim(current, calibration, epsilon=g, **trim_options)
    trimmed = time.perf_counter()
    finetune(candidate, train_data, **tuning)
    tuned = time.perf_counter()
    metric = _scored(evaluate, candidate, finite=False)
    if not math.isfinite(metric):
        warnings.warn(f"compress: evaluate returned {metric} for the model trimmed at g = {g:.4g}; that round is "
                      "dropped", UserWarning, stacklevel=4)
    structure = trim_options["structure"]
    widths = {row.name: row.width_after for row in report.layers} if structure == "neurons" else None
    return candidate, Round(g, sparsity(candidate, **selection), metric, False, trimmed - start, tuned - trimmed,
                            time.perf_counter() - tuned, widths, structure)


def _stages(structure) -> tuple[str, ...]:
    """structure as a tuple of stages, each one of STRUCTURES, or a ValueError naming `structure`."""
    if isinstance(structure, str):
        stages = (structure,)
    else:
        stages = tuple(structure) if isinstance(structure, list | tuple) else ()
    if not stages or any(stage not in STRUCTURES for stage in stages):
        raise ValueError(f"structure must be one of {STRUCTURES} or a sequence of them, got {structure!r}")
    return stages


def _stage_options(trim_options: dict, stage: str) -> dict:
    """The trim options of one stage: its structure; gather_inputs only where it removes neurons."""
    options = {**trim_options, "structure": stage}
    if stage != "neurons":
        options.pop("gather_inputs", None)
    return options


def _scored(evaluate, model: nn.Module, finite: bool = True) -> float:
    """evaluate(model) in eval mode as a float; a ValueError when it is not a number (or, with `finite`, not a
    finite one: the original model's metric is what every round is judged against)."""
    model.eval()
    metric = evaluate(model)
    try:
        metric = float(metric)
    except (TypeError, ValueError):
        raise ValueError(f"evaluate must return a number, got {type(metric).__name__}") from None
    if finite and not math.isfinite(metric):
        raise ValueError(f"evaluate returned {metric}, not a finite number")
    return metric


def sparsity(model: nn.Module, layers=None, exclude=None, total: int | None = None) -> float:
    """1 - (nonzeros of the selected layers' weights and biases) / total, all Linear and Conv2d by default;
    total defaults to their size (the zeros' fraction), or is the original model's weight_count when `model`
    has lost neurons."""
    matrices = [layer.weight_matrix() for layer in select_layers(model, layers, exclude)]
    total = sum(matrix.size for matrix in matrices) if total is None else total
    return 1.0 - sum(int(np.count_nonzero(matrix)) for matrix in matrices) / max(total, 1)


def weight_count(model: nn.Module, layers=None, exclude=None) -> int:
    """The selected layers' weights and biases, zeros included."""
    return sum(layer.weight_matrix().size for layer in select_layers(model, layers, exclude))


def _check_arguments(evaluate, max_drop, epsilon, rounds, grow, max_epsilon, epochs, lr, schedule, trim_options,
                     train_data) -> None:
    if not callable(evaluate):
        raise ValueError(f"evaluate must be a function of the model returning a number, got {evaluate!r}")
    if not (isinstance(max_drop, int | float) and math.isfinite(max_drop) and max_drop >= 0):
        raise ValueError(f"max_drop must be a finite number >= 0, got {max_drop!r}")
    if not (isinstance(epsilon, int | float) and 0 < epsilon <= max_epsilon):
        raise ValueError(f"epsilon must be a number in (0, max_epsilon={max_epsilon}], got {epsilon!r}")
    if not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be an int >= 1, got {rounds!r}")
    if not (isinstance(grow, int | float) and grow >= 1):
        raise ValueError(f"grow must be a number >= 1, got {grow!r}")
    if not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be an int >= 0, got {epochs!r}")
    if not (isinstance(lr, int | float) and lr > 0):
        raise ValueError(f"lr must be a number > 0, got {lr!r}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if epochs and hasattr(train_data, "__len__") and len(train_data) == 0:
        raise ValueError("train_data: holds no batches (x, y); every round fine-tunes on it")
    for refused in ("inplace", "model_sparsity", "checkpoint"):
        if refused in trim_options:
            raise ValueError(f"{refused}: not an option of compress() (each round trims a copy of the current "
                             "model at the round's budget)")
