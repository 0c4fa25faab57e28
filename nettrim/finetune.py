"""Masked fine-tuning: train a trimmed model further while every zero weight stays exactly zero.

The mask is taken once, from the zeros of every nn.Linear and nn.Conv2d weight and bias. Each step zeroes the
masked gradients before the optimizer sees them and the masked entries after it (momentum or weight decay
could otherwise revive them). No reparametrization is registered, so the model keeps plain parameters.

With a teacher (the dense model the trimmed one came from), each batch's loss is knowledge distillation
(Hinton, Vinyals and Dean 2015) on class logits s (the model's) and t (the teacher's):

    (1 - distill) loss(s, y) + distill T^2 KL(softmax(t / T) || softmax(s / T)),   T = TEMPERATURE,

so the sparse model learns the teacher's whole output distribution, not only its labels.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .layers import layer_kind
from .renormalize import renormalized

SCHEDULES = ("constant", "cosine")
#: The distillation temperature T (docs/compress.md: T = 4 and 8 measured alike).
TEMPERATURE = 4.0


class ShuffledBatches:
    """Batches (x, y) of labelled tensors in a new seeded order on every pass: a training loader for finetune()
    and compress() when the data is already in memory."""

    def __init__(self, inputs: torch.Tensor, labels: torch.Tensor, batch_size: int = 128, seed: int = 0):
        if len(inputs) != len(labels):
            raise ValueError(f"inputs and labels: {len(inputs)} inputs but {len(labels)} labels")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        self.inputs, self.labels, self.batch_size = inputs, torch.as_tensor(labels), batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return -(-len(self.labels) // self.batch_size)

    def __iter__(self):
        for batch in torch.randperm(len(self.labels), generator=self.generator).split(self.batch_size):
            yield self.inputs[batch], self.labels[batch]


def zero_masks(model: nn.Module) -> dict[nn.Parameter, torch.Tensor]:
    """For each weight and bias of the model's Linear and Conv2d layers that has zeros: True where it is zero."""
    masks = {}
    for module in model.modules():
        if layer_kind(module):
            for parameter in (module.weight, module.bias):
                if parameter is not None and bool((parameter == 0).any()):
                    masks[parameter] = parameter.detach() == 0
    return masks


def distillation_loss(logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """T^2 KL(softmax(teacher_logits / T) || softmax(logits / T)), averaged over the batch (T = TEMPERATURE)."""
    return TEMPERATURE ** 2 * nn.functional.kl_div(
        nn.functional.log_softmax(logits / TEMPERATURE, dim=1),
        nn.functional.log_softmax(teacher_logits / TEMPERATURE, dim=1), log_target=True, reduction="batchmean")


def finetune(model: nn.Module, loader, epochs: int = 1, lr: float = 1e-4, *, schedule: str = "constant",
             loss=None, teacher: nn.Module | None = None, distill: float = 0.9, renormalize: bool = False,
             mixup: float = 0.0, validation=None, progress: bool = True) -> nn.Module:
    """Train `model` in place with Adam for `epochs` passes over `loader` (batches (x, y)), keeping its zeros.

    schedule: "constant" (lr throughout) or "cosine": lr_t = lr (1 + cos(pi t / T)) / 2 over the T batches
    of all epochs (T = epochs * len(loader); a loader without len() decays once per epoch instead).
    loss(output, y) defaults to cross-entropy. teacher: a model of the same outputs (class logits) to distill
    from, with weight `distill` in [0, 1] on its term (module docstring); it runs in eval mode without
    gradients and is handed back in the mode it came in.
    renormalize: train with a batch normalization after every nn.Conv2d, folded back into it at the end
    (nettrim/renormalize.py): for networks whose BatchNorm trim folded away. mixup: alpha > 0 trains on
    x'_i = lam_i x_i + (1 - lam_i) x_perm(i), lam_i ~ Beta(alpha, alpha) per sample (seeded), against the class
    probabilities lam_i onehot(y_i) + (1 - lam_i) onehot(y_perm(i)) (Zhang et al. 2018; loss gets them as y, as
    the default cross-entropy accepts them), the teacher's term on x' itself: with a teacher, every batch shows
    it new inputs to match (Beyer et al. 2022). y must be class indices. 0: off.
    validation: batches (x, y) of class indices (a loader, or [(x, y)]) that choose the epoch to keep: after every
    epoch the model's accuracy on them (argmax of its output against y, in eval mode) is measured, and the model
    returned is the one after the most accurate epoch (the earliest of ties); with renormalize, its normalization
    too. None: the last epoch's. An interrupted run keeps the weights it had when interrupted.
    Returns the model in the training mode it came in.
    """
    if not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be an int >= 0, got {epochs!r}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if teacher is not None and not isinstance(teacher, nn.Module):
        raise ValueError(f"teacher must be an nn.Module (the model to distill from) or None, got {teacher!r}")
    check_distill(distill)
    check_mixing(renormalize, mixup)
    if validation is not None and not hasattr(validation, "__iter__"):
        raise ValueError(f"validation must be batches (x, y) (a loader, or [(x, y)]) or None, got {validation!r}")
    with renormalized(model) if renormalize else contextlib.nullcontext(nn.ModuleList()) as norms:
        best = BestEpoch(validation, model, norms)
        _trained(model, loader, epochs, lr, schedule, loss, teacher, distill, mixup, norms, best, progress)
        return best.restored()


def _trained(model, loader, epochs, lr, schedule, loss, teacher, distill, mixup, norms, best, progress) -> None:
    """finetune's loop, its arguments checked; norms: modules whose parameters train too; best.consider() after
    every epoch."""
    objective = _objective(nn.functional.cross_entropy if loss is None else loss, teacher, distill)
    masks = zero_masks(model)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad] + list(norms.parameters()),
                                 lr=lr)
    mixing = (np.random.default_rng(0), torch.Generator().manual_seed(0), float(mixup)) if mixup else None
    per_batch = hasattr(loader, "__len__")
    steps = epochs * len(loader) if per_batch else epochs
    decay = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(steps, 1)) if schedule == "cosine"
             else None)
    was_training, teacher_was_training = model.training, teacher is not None and teacher.training
    device = next(model.parameters()).device
    model.train()
    if teacher is not None:
        teacher.eval()
    try:
        for epoch in range(epochs):
            seen = 0
            for batch in tqdm(loader, desc=f"fine-tune {epoch + 1}/{epochs}", leave=False, disable=not progress):
                _masked_step(model, batch, device, optimizer, objective, mixing, masks)
                seen += 1
                if decay is not None and per_batch:
                    decay.step()
            if not seen:
                raise ValueError("loader: yielded no batches (x, y); it must yield them on every pass")
            if decay is not None and not per_batch:
                decay.step()
            best.consider()
    finally:
        model.train(was_training)
        if teacher is not None:
            teacher.train(teacher_was_training)


def _masked_step(model: nn.Module, batch, device, optimizer, objective, mixing, masks) -> None:
    """One optimizer step on `batch` (x, y), mixed when `mixing`, its masked gradients and weights kept zero."""
    if not isinstance(batch, tuple | list) or len(batch) < 2:
        raise ValueError("loader: each batch must be (x, y)")
    x, y = batch[0].to(device), batch[1].to(device)
    optimizer.zero_grad()
    x, labelled = _mixed(x, mixing)
    output = model(x)
    objective(output, x, labelled(y, output.shape[-1])).backward()
    for parameter, mask in masks.items():
        if parameter.grad is not None:
            parameter.grad.masked_fill_(mask, 0.0)
    try:
        optimizer.step()
    finally:  # even when interrupted mid-step, the zeros are zeros again
        with torch.no_grad():
            for parameter, mask in masks.items():
                parameter.masked_fill_(mask, 0.0)


class BestEpoch:
    """The state (model and norms) after the epoch most accurate on `validation` (finetune's docstring); with
    validation None, nothing is kept and restored() returns the model as it is."""

    def __init__(self, validation, model: nn.Module, norms: nn.Module):
        self.validation, self.model, self.norms = validation, model, norms
        self.accuracy, self.state = -1.0, None

    def consider(self) -> None:
        """Measure the model's validation accuracy now; keep a copy of its state if it is the best so far."""
        if self.validation is None:
            return
        accuracy = self.measured()
        if accuracy > self.accuracy:
            self.accuracy = accuracy
            self.state = [{name: value.detach().clone() for name, value in module.state_dict().items()}
                          for module in (self.model, self.norms)]

    @torch.no_grad()
    def measured(self) -> float:
        """The share of validation's labels that the model's argmax (in eval mode) gets right."""
        training, right, count = self.model.training, 0, 0
        device = next(self.model.parameters()).device
        self.model.eval()
        try:
            for batch in self.validation:
                if not isinstance(batch, tuple | list) or len(batch) < 2:
                    raise ValueError("validation: each batch must be (x, y)")
                guesses = self.model(batch[0].to(device)).argmax(-1)
                right += int((guesses == batch[1].to(device)).sum())
                count += len(guesses)
        finally:
            self.model.train(training)
        if count == 0:
            raise ValueError("validation: holds no examples")
        return right / count

    def restored(self) -> nn.Module:
        """The model, its state (and its norms') set back to the best epoch's when one was kept."""
        if self.state is not None:
            for module, state in zip((self.model, self.norms), self.state, strict=True):
                module.load_state_dict(state)
        return self.model


def check_mixing(renormalize, mixup) -> None:
    """Refuse a renormalize that is not a bool or a mixup that is not a finite number >= 0, naming it."""
    if not isinstance(renormalize, bool):
        raise ValueError(f"renormalize must be True or False, got {renormalize!r}")
    if isinstance(mixup, bool) or not isinstance(mixup, int | float) or not 0 <= mixup < float("inf"):
        raise ValueError(f"mixup must be a number >= 0 (the Beta(alpha, alpha) of the mixing weight; 0: off), "
                         f"got {mixup!r}")


def _mixed(x: torch.Tensor, mixing):
    """(x, labelled) unmixed, labelled(y, classes) = y; or mixed: x'_i = lam_i x_i + (1 - lam_i) x_perm(i) with
    labelled(y, classes) the class probabilities lam_i onehot(y_i) + (1 - lam_i) onehot(y_perm(i)), lam and perm
    drawn from mixing = (numpy generator, torch generator, alpha)."""
    if mixing is None:
        return x, lambda y, classes: y
    shares, order, alpha = mixing
    share = torch.as_tensor(shares.beta(alpha, alpha, size=len(x)), dtype=x.dtype, device=x.device)
    perm = torch.randperm(len(x), generator=order).to(x.device)
    weight = share.view(-1, *[1] * (x.dim() - 1))

    def labelled(y, classes):
        onehot = nn.functional.one_hot(y.long(), classes).to(x.dtype)
        return share[:, None] * onehot + (1 - share[:, None]) * onehot[perm]
    return weight * x + (1 - weight) * x[perm], labelled


def check_distill(distill) -> None:
    """Refuse a distillation weight outside [0, 1] with a ValueError naming `distill`."""
    if isinstance(distill, bool) or not isinstance(distill, int | float) or not 0 <= distill <= 1:
        raise ValueError(f"distill must be a number in [0, 1] (the distillation term's weight), got {distill!r}")


def _objective(loss, teacher: nn.Module | None, distill: float):
    """objective(output, x, y): loss(output, y), or with a teacher its mix with distillation_loss."""
    if teacher is None:
        return lambda output, x, y: loss(output, y)

    def distilled(output, x, y):
        with torch.no_grad():
            target = teacher(x)
        return (1 - distill) * loss(output, y) + distill * distillation_loss(output, target)
    return distilled
