"""nettrim: Net-Trim pruning of trained PyTorch models (the torch side; the layer math lives in `solvers`).

    >>> import nettrim
    >>> trimmed, report = nettrim.trim(model, calibration_inputs, epsilon=0.05, mode="cascade")
    >>> print(report)                                   # per-layer table: nonzeros, fit/eps, status, time
    >>> nettrim.save(trimmed, "trimmed.safetensors", report)
    >>> nettrim.finetune(trimmed, train_loader, epochs=3, lr=1e-3, schedule="cosine")  # keeps every zero at zero
    >>> smaller, history = nettrim.compress(model, calibration_inputs, train_loader, evaluate=accuracy,
    ...                                     max_drop=0.005)     # rounds of trim + fine-tune within the metric
    >>> smallest, history = nettrim.compress(model, calibration_inputs, train_loader, evaluate=accuracy,
    ...                                      max_drop=0.005, structure=("neurons", "weights"), distill=0.9,
    ...                                      refit=True)         # neurons, then weights; distilled from `model`
"""

__version__ = "0.1.0"

from .arguments import MODES  # noqa: E402
from .compression import CompressInterrupted, History, compress  # noqa: E402
from .finetune import ShuffledBatches, finetune  # noqa: E402
from .io import load, save  # noqa: E402
from .report import LayerReport, Report  # noqa: E402
from .trim import TrimInterrupted, trim  # noqa: E402

__all__ = ["MODES", "CompressInterrupted", "History", "LayerReport", "Report", "ShuffledBatches", "TrimInterrupted",
           "compress", "finetune", "load", "save", "trim", "__version__"]
