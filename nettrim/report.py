"""The trim report: one row per layer, totals, a table for people and JSON for programs."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path


@dataclass
class LayerReport:
    """What happened to one layer.

    nonzeros_before/after and `weights` count the weight matrix alone; the bias, when the layer has one, is the
    last row of Net-Trim's U and trimmed with it, counted apart (bias_nonzeros_before/after of M entries).
    eps is the layer's Frobenius budget (sqrt(sum eps_m^2) for per-neuron budgets); fit_ratio is the largest
    ||(U^T X - Y)_Omega|| / eps (per neuron, or for the layer); violation is the largest Omega^c excess
    (U^T X - V)_+ relative to max|Y|; dense_fallback counts the neurons (columns) that kept their original
    weights because the solver's weights missed the budget (unconverged or infeasible); sparser_original the
    neurons that kept them because they had fewer nonzeros than the solution (l1 is not l0: a neuron that was
    already sparse can come back with more, smaller weights), so a layer never gains nonzeros; certified_gap
    is how far the solved weights' l1 is proven to be from the program's optimum, over the neurons whose solved
    weights were kept (1 - bound / l1, each bound clipped to [0, its l1], so it lies in [0, 1]; None for the
    cvxpy backend, or when no solved neuron was kept). A grouped convolution's W (N x M) holds each output
    channel's weights over its group's inputs (torch's compact form), and its eps and fit are the groups'.
    """

    name: str
    kind: str
    activation: str
    shape: list[int]                      # [N, M], the bias row included in N
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
    bias: bool = False
    bias_nonzeros_before: int = 0
    bias_nonzeros_after: int = 0
    sparser_original: int = 0
    groups: int = 1                       # a grouped convolution's groups: W is N x M over each group's inputs
    inputs_unread: int | None = None      # neuron trimming: the layer's inputs (features, channels) read with zeros
    width_before: int | None = None       # neuron trimming: the layer's output neurons (channels) before and after
    width_after: int | None = None
    refit_error: list[float] | None = None  # refit=True: the output error / ||Y||_F, [trimmed, refitted weights]
    capture_seconds: float = 0.0          # the capture of the layer's input (cascade: from the model trimmed so far)
    neurons: dict[str, int] | None = None  # the solver's per-neuron statuses counted ({"optimal": 30, "suboptimal": 2})

    @property
    def weights(self) -> int:
        """Entries of the weight matrix (N x M less the bias row)."""
        N, M = self.shape
        return (N - self.bias) * M

    @property
    def kept(self) -> float:
        """Fraction of the weights (biases excluded) that are nonzero after trimming."""
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
    model_sparsity: dict | None = None  # a model_sparsity search: target, reached, scale, trims [[scale, sparsity]]
    structure: str = "weights"
    size: dict | None = None  # neuron trimming: params, flops, latency_ms {batch: ms}, each {"before", "after"}

    def total(self, attribute: str) -> int:
        """The sum of a count over the layers ("weights", "nonzeros_after", "dense_fallback", ...)."""
        return sum(getattr(layer, attribute) for layer in self.layers)

    @property
    def neuron_statuses(self) -> dict[str, int]:
        """The solver's per-neuron statuses over the layers, counted (layers solved without them apart)."""
        counts: dict[str, int] = {}
        for row in self.layers:
            for status, count in (row.neurons or {}).items():
                counts[status] = counts.get(status, 0) + count
        return counts

    @property
    def nonzeros_before(self) -> int:
        return self.total("nonzeros_before")

    @property
    def nonzeros_after(self) -> int:
        return self.total("nonzeros_after")

    @property
    def weights(self) -> int:
        return self.total("weights")

    @property
    def kept(self) -> float:
        """Fraction of the trimmed layers' weights (biases excluded) that are nonzero after trimming."""
        return self.nonzeros_after / max(self.weights, 1)

    @property
    def dense_fallback(self) -> int:
        """Neurons that kept their original weights because the solver's missed their budget."""
        return self.total("dense_fallback")

    def dense_fallback_warning(self) -> str | None:
        """One sentence naming the layers with dense fallbacks, or None."""
        layers = {row.name: row.dense_fallback for row in self.layers if row.dense_fallback}
        if not layers:
            return None
        named = ", ".join(f"{name!r} ({count})" for name, count in layers.items())
        return (f"{self.dense_fallback} neurons kept their original (dense) weights because the solver's weights "
                f"missed their budget (not converged in max_iter / time_limit, or an infeasible budget): {named}; "
                "the report's status column says why per layer")

    def layer(self, name: str) -> LayerReport:
        for row in self.layers:
            if row.name == name:
                return row
        raise KeyError(name)

    def to_dict(self) -> dict:
        return {
            "mode": self.mode, "backend": self.backend, "reweight": self.reweight, "seconds": self.seconds,
            "folded_batchnorm": dict(self.folded_batchnorm), "not_trimmed": dict(self.not_trimmed),
            "model_sparsity": self.model_sparsity, "structure": self.structure, "size": self.size,
            "totals": {"weights": self.weights, "nonzeros_before": self.nonzeros_before,
                       "nonzeros_after": self.nonzeros_after, "kept": self.kept, "sparsity": 1 - self.kept,
                       "biases": sum(row.shape[1] for row in self.layers if row.bias),
                       "bias_nonzeros_after": self.total("bias_nonzeros_after"),
                       "dense_fallback": self.dense_fallback, "sparser_original": self.total("sparser_original"),
                       "neuron_statuses": self.neuron_statuses},
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
                   not_trimmed=dict(data.get("not_trimmed", {})), model_sparsity=data.get("model_sparsity"),
                   structure=data.get("structure", "weights"), size=data.get("size"),
                   layers=[LayerReport(**{key: row[key] for key in _FIELDS if key in row}) for row in data["layers"]])

    def table(self) -> str:
        header = ("layer", "kind", "act", "W (N x M)", "P", "nonzeros", "kept", "bias", "eps", "fit/eps", "viol",
                  "l1 gap", "iters", "capture s", "sec", "status")
        rows = [header]
        for r in self.layers:
            notes = [f"{r.dense_fallback} dense"] * bool(r.dense_fallback) + [
                f"{r.sparser_original} original sparser"] * bool(r.sparser_original)
            kind = r.kind if r.groups == 1 else f"{r.kind} g={r.groups}"
            rows.append((r.name, kind, r.activation, f"{r.shape[0] - r.bias} x {r.shape[1]}", str(r.samples),
                         f"{r.nonzeros_before} -> {r.nonzeros_after}", f"{100 * r.kept:.1f}%",
                         f"{r.bias_nonzeros_before} -> {r.bias_nonzeros_after}" if r.bias else "-", f"{r.eps:.4g}",
                         f"{r.fit_ratio:.4f}", f"{r.violation:.1e}",
                         "-" if r.certified_gap is None else f"{100 * r.certified_gap:.2f}%", str(r.iterations),
                         f"{r.capture_seconds:.1f}", f"{r.seconds:.1f}",
                         r.status + (f" ({', '.join(notes)})" if notes else "")))
        others = [f"{count} neurons {status}" for status, count in self.neuron_statuses.items() if status != "optimal"]
        fallbacks = ", ".join([f"{self.dense_fallback} neurons dense"] * bool(self.dense_fallback) + others)
        rows.append(("total", "", "", str(self.weights), "", f"{self.nonzeros_before} -> {self.nonzeros_after}",
                     f"{100 * self.kept:.1f}%", f"{self.total('bias_nonzeros_before')} -> "
                     f"{self.total('bias_nonzeros_after')}", "", "", "", "", "", "", f"{self.seconds:.1f}", fallbacks))
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
                 for row in rows]
        lines.insert(1, "  ".join("-" * width for width in widths))
        lines.insert(len(lines) - 1, lines[1])
        return "\n".join(lines)

    def _neurons_summary(self) -> str:
        """Neuron trimming's lines: widths, inputs no longer read, and the model's size and speed."""
        if self.structure != "neurons":
            return ""
        widths = ", ".join(f"{row.name} {row.width_before} -> {row.width_after}" for row in self.layers
                           if row.width_before is not None)
        lines = [f"neurons kept (output widths): {widths}"]
        first = self.layers[0] if self.layers else None
        if first is not None and first.inputs_unread:
            lines.append(f"inputs of the model no longer read by {first.name!r}: {first.inputs_unread}")
        if self.size:
            size = self.size
            lines += [f"layer {name!r} gathers the inputs it reads: {count} inputs of the model dropped"
                      for name, count in size.get("inputs_dropped", {}).items()]
            lines.append(f"parameters {size['params']['before']:,} -> {size['params']['after']:,}, FLOPs "
                         f"{size['flops']['before']:,} -> {size['flops']['after']:,} per input")
            lines += [f"CPU latency at batch {batch}: {times['before']:.3g} -> {times['after']:.3g} ms "
                      f"({times['before'] / max(times['after'], 1e-12):.2f}x)"
                      for batch, times in size["latency_ms"].items()]
        return "".join(f"\n{line}" for line in lines)

    def _refit_summary(self) -> str:
        """refit=True's line: each layer's output error relative to ||Y||_F, trimmed -> refitted weights."""
        errors = [f"{row.name} {row.refit_error[0]:.4f} -> {row.refit_error[1]:.4f}" for row in self.layers
                  if row.refit_error is not None]
        return f"\nrefit, output error / ||Y|| on the calibration data: {', '.join(errors)}" if errors else ""

    def __str__(self) -> str:
        rounds = f", {self.reweight} reweighting rounds" if self.reweight else ""
        untouched = "".join(f"\nnot trimmed: {name} ({reason})" for name, reason in self.not_trimmed.items())
        notes = ("\nnonzeros and kept count the weights; the bias column counts the biases, which Net-Trim trims "
                 "as the last row of each layer's weights" if any(row.bias for row in self.layers) else "")
        if self.model_sparsity is not None:
            search = self.model_sparsity
            how = (f"every g scaled by {search['scale']:.4g} ({len(search['trims'])} trims)" if "scale" in search
                   else "per-layer shares from the weights' saliencies, one pass")
            notes += f"\nmodel sparsity {search['reached']:.4f} for target {search['target']:g}: {how}"
        if any(row.activation == "linear" for row in self.layers):
            notes += ("\nact linear: the budget bounds the layer's output before whatever follows it; through an "
                      "L-Lipschitz activation the error is at most L eps (L = 1.13 for GELU, 1.10 for SiLU, 1.5 for "
                      "hardswish, 1 for max pooling)")
        fallbacks = self.dense_fallback_warning()
        notes += f"\n{fallbacks}" if fallbacks else ""
        notes += self._neurons_summary() + self._refit_summary()
        return f"Net-Trim ({self.mode}, {self.backend}{rounds})\n{self.table()}{untouched}{notes}"
