"""A trim's plan: trim()'s arguments checked once (each bad one refused by name, before any work) and its
aim-dependent defaults resolved, as one frozen value that the trim's parts read."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import __version__
from .arguments import check_limits, check_options, check_structure, solver_options_for, sparsity_aims
from .schedule import check_scheduling


@dataclass(frozen=True)
class TrimPlan:
    """What a trim does (trim()'s docstring explains each setting); `solve_options` are the solver's options
    with the device, max_iter and the defaults folded in."""

    epsilon: float | Mapping[str, float]
    mode: str
    backend: str
    solve_options: dict
    budget: str
    gamma: float
    kappa: float | None
    reweight: int
    target_sparsity: float | Mapping[str, float] | None
    model_sparsity: float | None
    max_epsilon: float
    max_samples: int | None
    seed: int
    batch_size: int
    time_limit: float | None
    structure: str
    refit: bool
    relu_program: str
    gather_inputs: bool
    inplace: bool
    progress: bool
    layers: Any
    exclude: Any
    relu_layers: Any
    checkpoint: Any
    executor: Any
    workers: int | None
    block_size: int | None

    @classmethod
    def of(cls, *, device, max_iter, solver_options, **settings) -> TrimPlan:
        """The plan of trim(**arguments) (all but the model and its calibration), every argument checked."""
        aims = (settings["refit"], settings["relu_program"], settings["reweight"], settings["target_sparsity"],
                settings["model_sparsity"])
        refit, relu_program, reweight = sparsity_aims(*aims)
        settings = {**settings, "refit": refit, "relu_program": relu_program, "reweight": reweight}
        check_options(*(settings[name] for name in ("mode", "backend", "budget", "gamma", "kappa", "max_samples",
                                                     "reweight", "max_epsilon")))
        check_structure(settings["structure"], settings["inplace"], settings["gather_inputs"])
        check_limits(settings["backend"], max_iter, *(settings[name] for name in ("time_limit", "model_sparsity",
                                                                                   "target_sparsity", "checkpoint")))
        solve_options = solver_options_for(settings["backend"], device, solver_options, max_iter)
        check_scheduling(settings["executor"], settings["workers"], settings["block_size"])
        return cls(solve_options=solve_options, **settings)

    def fingerprinted(self, budgets: dict, targets: dict, relu: set[str]) -> dict:
        """The settings a checkpoint must match to be resumed: everything that changes a layer's solve."""
        names = ("mode", "budget", "gamma", "kappa", "reweight", "max_epsilon", "max_samples", "seed", "batch_size",
                 "backend", "solve_options", "time_limit", "structure", "refit", "relu_program")
        settings = {name: getattr(self, name) for name in names}
        return {**settings, "budgets": budgets, "targets": targets, "relu": sorted(relu), "version": __version__}
