"""The trim report: one row per layer, totals, a table for people and JSON for programs."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path


@dataclass
class LayerReport:
    """What happened to one layer.

    eps is the layer's Frobenius budget (sqrt(sum eps_m^2) for per-neuron budgets); fit_ratio is the largest
    ||(U^T X - Y)_Omega|| / eps (per neuron, or for the layer); violation is the largest Omega^c excess
    (U^T X - V)_+ relative to max|Y|; dense_fallback counts the neurons (columns) that kept their original
    weights because the solver's weights missed the budget (unconverged or infeasible); certified_gap is how
    far the solver's l1 is proven to be from the layer program's optimum (the ADMM's weak-duality bound;
    None for the cvxpy backend).
    """

    name: str
    kind: str
    activation: str
    shape: list[int]
    samples: int
    nonzeros_before: int
    nonzeros_after: int
    eps: float
    fit_ratio: float
    violation: float
    iterations: int
    seconds: float
    status: str
    message: str = ""
    dense_fallback: int = 0
    g: float = 0.0                        # the relative budget used (0 = the inherited cascade budget alone)
    target_sparsity: float | None = None
    certified_gap: float | None = None

    @property
    def weights(self) -> int:
        """Entries of W (N x M, bias row included)."""
        count = 1
        for size in self.shape:
            count *= size
        return count

    @property
    def kept(self) -> float:
        return self.nonzeros_after / max(self.weights, 1)


_FIELDS = [f.name for f in fields(LayerReport)]


@dataclass
class Report:
    """Per-layer rows in trimming order, and what was done (mode, backend, BatchNorm folded, total time)."""

    mode: str
    backend: str
    layers: list[LayerReport] = field(default_factory=list)
    folded_batchnorm: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    reweight: int = 0
    not_trimmed: dict[str, str] = field(default_factory=dict)  # layers with weights left as they were, and why

    @property
    def nonzeros_before(self) -> int:
        return sum(layer.nonzeros_before for layer in self.layers)

    @property
    def nonzeros_after(self) -> int:
        return sum(layer.nonzeros_after for layer in self.layers)

    @property
    def weights(self) -> int:
        return sum(layer.weights for layer in self.layers)

    @property
    def kept(self) -> float:
        """Fraction of the trimmed layers' weights (biases included) that are nonzero after trimming."""
        return self.nonzeros_after / max(self.weights, 1)

    def layer(self, name: str) -> LayerReport:
        for row in self.layers:
            if row.name == name:
                return row
        raise KeyError(name)

    def to_dict(self) -> dict:
        return {
            "mode": self.mode, "backend": self.backend, "reweight": self.reweight, "seconds": self.seconds,
            "folded_batchnorm": dict(self.folded_batchnorm), "not_trimmed": dict(self.not_trimmed),
            "totals": {"weights": self.weights, "nonzeros_before": self.nonzeros_before,
                       "nonzeros_after": self.nonzeros_after, "kept": self.kept, "sparsity": 1 - self.kept},
            "layers": [{**asdict(layer), "weights": layer.weights, "kept": layer.kept, "sparsity": 1 - layer.kept}
                       for layer in self.layers],
        }

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    @classmethod
    def from_dict(cls, data: dict) -> Report:
        return cls(mode=data["mode"], backend=data["backend"], seconds=data["seconds"],
                   reweight=data.get("reweight", 0), folded_batchnorm=dict(data.get("folded_batchnorm", {})),
                   not_trimmed=dict(data.get("not_trimmed", {})),
                   layers=[LayerReport(**{key: row[key] for key in _FIELDS if key in row}) for row in data["layers"]])

    def table(self) -> str:
        header = ("layer", "kind", "act", "W (N x M)", "P", "nonzeros", "kept", "eps", "fit/eps", "viol",
                  "l1 gap", "iters", "sec", "status")
        rows = [header]
        for r in self.layers:
            status = r.status + (f" ({r.dense_fallback} dense)" if r.dense_fallback else "")
            rows.append((r.name, r.kind, r.activation, " x ".join(map(str, r.shape)), str(r.samples),
                         f"{r.nonzeros_before} -> {r.nonzeros_after}", f"{100 * r.kept:.1f}%", f"{r.eps:.4g}",
                         f"{r.fit_ratio:.4f}", f"{r.violation:.1e}",
                         "-" if r.certified_gap is None else f"{100 * r.certified_gap:.2f}%", str(r.iterations),
                         f"{r.seconds:.1f}", status))
        rows.append(("total", "", "", str(self.weights), "", f"{self.nonzeros_before} -> {self.nonzeros_after}",
                     f"{100 * self.kept:.1f}%", "", "", "", "", "", f"{self.seconds:.1f}", ""))
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
                 for row in rows]
        lines.insert(1, "  ".join("-" * width for width in widths))
        lines.insert(len(lines) - 1, lines[1])
        return "\n".join(lines)

    def __str__(self) -> str:
        rounds = f", {self.reweight} reweighting rounds" if self.reweight else ""
        untouched = "".join(f"\nnot trimmed: {name} ({reason})" for name, reason in self.not_trimmed.items())
        return f"Net-Trim ({self.mode}, {self.backend}{rounds})\n{self.table()}{untouched}"
