"""trim()'s arguments, checked before any work: each bad one is refused with a ValueError that names it, and the
defaults that depend on the trim's aim (a sparsity or budgets) are resolved here."""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

import solvers

from .layers import Layer

MODES = ("cascade", "parallel")
BUDGETS = ("neuron", "layer")
STRUCTURES = ("weights", "neurons")
RELU_PROGRAMS = ("relu", "pre-activation")
#: Solver options used unless solver_options says otherwise: float32 iterations (the returned weights are
#: still measured exactly in float64 against their budget).
DEFAULT_ADMM_OPTIONS = {"dtype": "float32"}


def sparsity_aims(refit, relu_program, reweight, target_sparsity, model_sparsity) -> tuple[bool, str, int]:
    """refit, relu_program and reweight as given, or (None) what serves the trim's aim. When it aims at a sparsity
    (target_sparsity or model_sparsity) the budgets are only the means to it: the pre-activation program, one
    round of reweighting (fewer nonzeros at a budget, so a smaller budget for the target) and the refit keep the
    model closest to the original at that sparsity (on a CIFAR-10 ResNet-20 at 70% and 80%, validation accuracy
    91.8% and 81.1% without the reweighting round, 95.7% and 89.5% with it: docs/cifar-resnet20.md). A trim that
    keeps budgets (epsilon) gets Net-Trim's program alone."""
    aims_at_sparsity = target_sparsity is not None or model_sparsity is not None
    if refit is None:
        refit = aims_at_sparsity
    if not isinstance(refit, bool):
        raise ValueError(f"refit must be True, False or None, got {refit!r}")
    if relu_program is None:
        relu_program = "pre-activation" if aims_at_sparsity else "relu"
    if relu_program not in RELU_PROGRAMS:
        raise ValueError(f"relu_program must be one of {RELU_PROGRAMS} or None, got {relu_program!r}")
    if reweight is None:
        reweight = int(aims_at_sparsity)
    return refit, relu_program, reweight


def check_structure(structure: str, inplace: bool, gather_inputs: bool) -> None:
    if structure not in STRUCTURES:
        raise ValueError(f"structure must be one of {STRUCTURES}, got {structure!r}")
    if not isinstance(gather_inputs, bool) or (gather_inputs and structure != "neurons"):
        raise ValueError(f"gather_inputs: True only with structure='neurons', got {gather_inputs!r} with "
                         f"structure={structure!r}")
    if structure == "neurons" and inplace:
        raise ValueError("inplace: structure='neurons' returns a smaller model, which cannot replace the caller's "
                         "in place; use inplace=False (the default)")


def check_limits(backend, max_iter, time_limit, model_sparsity, target_sparsity, checkpoint) -> None:
    """Refuse bad per-layer limits and target combinations with a ValueError naming the argument."""
    if max_iter is not None and (isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1):
        raise ValueError(f"max_iter must be a positive int (ADMM iterations per layer) or None, got {max_iter!r}")
    if time_limit is not None and (isinstance(time_limit, bool) or not isinstance(time_limit, int | float)
                                   or not time_limit > 0):
        raise ValueError(f"time_limit must be a positive number of seconds per layer or None, got {time_limit!r}")
    if backend == "cvxpy" and (max_iter is not None or time_limit is not None):
        raise ValueError("max_iter and time_limit limit the ADMM; the cvxpy backend takes its solver's own "
                         "options through solver_options")
    if model_sparsity is None:
        return
    if isinstance(model_sparsity, bool) or not isinstance(model_sparsity, int | float) or not 0 < model_sparsity < 1:
        raise ValueError(f"model_sparsity must be a fraction in (0, 1), got {model_sparsity!r}")
    if target_sparsity is not None:
        raise ValueError("model_sparsity and target_sparsity: pass one of them (one target for the model, or one "
                         "per layer)")
    if checkpoint is not None:
        raise ValueError("checkpoint: a model_sparsity search repeats whole trims and is not checkpointed; "
                         "pass one of them")


def check_options(mode, backend, budget, gamma, kappa, max_samples, reweight, max_epsilon) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if backend not in solvers.BACKENDS:
        raise ValueError(f"backend must be one of {solvers.BACKENDS}, got {backend!r}")
    if budget not in BUDGETS:
        raise ValueError(f"budget must be one of {BUDGETS}, got {budget!r}")
    if not np.isfinite(gamma) or gamma < 1:
        raise ValueError(f"gamma must be a finite number >= 1 (the cascade's slack factor), got {gamma}")
    if kappa is not None and (not np.isfinite(kappa) or kappa <= 0):
        raise ValueError(f"kappa must be a positive number (the last layer's factor), got {kappa}")
    if max_samples is not None and (not isinstance(max_samples, int) or max_samples < 1):
        raise ValueError(f"max_samples must be a positive int or None, got {max_samples!r}")
    if isinstance(reweight, bool) or not isinstance(reweight, int) or reweight < 0:
        raise ValueError(f"reweight must be an int >= 0 (rounds of reweighted l1), got {reweight!r}")
    if not np.isfinite(max_epsilon) or not 0 < max_epsilon <= 1:
        raise ValueError(f"max_epsilon must be a number in (0, 1] (at g = 1 zero weights keep every budget), got "
                         f"{max_epsilon!r}")


def solver_options_for(backend: str, device, solver_options, max_iter: int | None) -> dict:
    if backend == "cvxpy":
        if device != "cpu":
            raise ValueError("device: the cvxpy backend runs on the CPU only (device='cuda' needs backend='admm')")
        return dict(solver_options or {})
    solvers.backend(device)  # a device that is not one, or a GPU that is not there, is refused before any work
    limit = {} if max_iter is None else {"max_iter": max_iter}
    options = {**DEFAULT_ADMM_OPTIONS, "device": device, **(solver_options or {}), **limit}
    try:
        solvers.AdmmSettings.of(options)  # an unknown or bad option, refused before any work
    except (TypeError, ValueError) as error:
        raise ValueError(f"solver_options: {error}") from None
    return options


def per_layer(argument: str, value, selected: list[Layer], default, upper: float | None) -> dict:
    """A number per layer from a number or a mapping of layer name or regex (full match) to numbers: an exact
    name wins over a regex, then the first matching regex, then `default`. Numbers must be >= 0 (and
    <= upper); a key that matches no selected layer is an error."""
    def checked(key, number):
        if (isinstance(number, bool) or not isinstance(number, int | float) or not np.isfinite(number)
                or number < 0 or (upper is not None and number > upper)):
            bounds = ">= 0" if upper is None else f"in [0, {upper:g}]"
            raise ValueError(f"{argument}: the value for {key!r} must be a number {bounds}, got {number!r}")
        return float(number)

    names = [layer.name for layer in selected]
    if not isinstance(value, Mapping):
        number = checked("every layer", value)
        return dict.fromkeys(names, number)
    patterns = {}
    for key, number in value.items():
        try:
            patterns[key] = (re.compile(key), checked(key, number))
        except (re.error, TypeError):
            raise ValueError(f"{argument}: {key!r} is not a layer name or a valid regex") from None
    for key, (pattern, _) in patterns.items():
        if not any(name == key or pattern.fullmatch(name) for name in names):
            raise ValueError(f"{argument}: {key!r} matches no selected layer (the selected layers: {names})")
    resolved = {}
    for name in names:
        if name in patterns:
            resolved[name] = patterns[name][1]
            continue
        resolved[name] = next((number for pattern, number in patterns.values() if pattern.fullmatch(name)), default)
    return resolved


def check_cascade_overrides(epsilon, order: list[Layer]) -> None:
    """In cascade mode only the first layer's g is used; a key that only names later layers would be ignored."""
    if not isinstance(epsilon, Mapping):
        return
    first = order[0].name
    for key in epsilon:
        if key != first and re.fullmatch(key, first) is None:
            raise ValueError(
                f"epsilon: {key!r} names layers after the first ({first!r}); in cascade mode their budgets are "
                "the error they inherit times gamma (kappa for the last layer), so set those, or use "
                "mode='parallel' for per-layer budgets")
