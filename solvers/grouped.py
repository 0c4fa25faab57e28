"""A layer whose neurons fall into groups that read different inputs: one LayerProblem per group.

A grouped convolution (groups = G; depthwise when every group has one input channel) is block diagonal: the
output channels of group g read only the input channels of group g. Its weights are stored compactly, one
column per neuron over its own group's inputs, so the layer's program is G independent programs,

    U = [U_1 ... U_G] (N x M),   U_g = argmin ||U_g||_1  s.t. the constraints of LayerProblem on (X_g, Y_g),

with neuron columns in group order and every X_g (N x P) over the same P samples (patch positions). Solving
each group solves the layer; with a scalar budget form each group has its own budget eps_g (the caller's
split: nettrim gives group g the share the layer's rule gives its rows, so sum eps_g^2 is the layer's eps^2).

GroupedProblem answers what the callers ask of a LayerProblem's results (shape, eps, evaluate, the budget
tests); its measures are the groups' side by side: per neuron, or per group for scalar budgets.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .problem import LayerProblem


@dataclass(frozen=True, eq=False)
class GroupedProblem:
    """The programs of a layer's groups (module docstring); `columns[g]` are group g's neurons in U."""

    parts: list[LayerProblem]
    columns: list[slice] = field(init=False, repr=False)

    def __post_init__(self):
        parts = list(self.parts)
        if not parts or not all(isinstance(part, LayerProblem) for part in parts):
            raise ValueError("parts must be a non-empty list of LayerProblem (one per group)")
        N, P, _ = parts[0].shape
        for index, part in enumerate(parts):
            if part.shape[:2] != (N, P) or part.activation != parts[0].activation:
                raise ValueError(f"parts: group {index} is {part.shape[:2]} ({part.activation}), group 0 is "
                                 f"{(N, P)} ({parts[0].activation}); every group has the same inputs and samples")
            if part.per_neuron != parts[0].per_neuron:
                raise ValueError("parts: every group has per-neuron budgets, or none has")
        edges = np.cumsum([0] + [part.shape[2] for part in parts])
        object.__setattr__(self, "parts", parts)
        object.__setattr__(self, "columns", [slice(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)])

    @property
    def shape(self) -> tuple[int, int, int]:
        """(N, P, M): each group's inputs, the samples, all neurons."""
        N, P, _ = self.parts[0].shape
        return N, P, self.columns[-1].stop

    @property
    def activation(self) -> str:
        return self.parts[0].activation

    @property
    def per_neuron(self) -> bool:
        return self.parts[0].per_neuron

    @property
    def groups(self) -> int:
        return len(self.parts)

    @property
    def eps(self) -> np.ndarray:
        """Per neuron (per-neuron budgets) or per group (scalar budgets)."""
        return np.concatenate([np.atleast_1d(part.eps) for part in self.parts])

    @property
    def Y(self) -> np.ndarray:
        return np.concatenate([part.Y for part in self.parts])

    @property
    def original_weights(self) -> np.ndarray | None:
        if any(part.original_weights is None for part in self.parts):
            return None
        return np.concatenate([part.original_weights for part in self.parts], axis=1)

    def budget_total(self) -> float:
        return float(np.linalg.norm(self.eps))

    def evaluate(self, U) -> dict:
        """LayerProblem.evaluate per group: objective summed, fit and response_error side by side (per neuron
        or per group), max_violation the largest."""
        U = np.asarray(U, dtype=np.float64)
        measures = [part.evaluate(U[:, columns]) for part, columns in zip(self.parts, self.columns, strict=True)]

        def side_by_side(key):
            return np.concatenate([np.atleast_1d(measure[key]) for measure in measures])

        return {"objective": float(sum(measure["objective"] for measure in measures)), "fit": side_by_side("fit"),
                "max_violation": max(measure["max_violation"] for measure in measures),
                "violations": side_by_side("violations"),
                "response_error": side_by_side("response_error")}

    def columns_within_budget(self, U, fit_rtol: float = 1e-3, violation_tol: float = 1e-5) -> np.ndarray:
        """(M,) bools: LayerProblem.columns_within_budget of each group on its columns."""
        U = np.asarray(U, dtype=np.float64)
        return np.concatenate([part.columns_within_budget(U[:, columns], fit_rtol, violation_tol)
                               for part, columns in zip(self.parts, self.columns, strict=True)])
