"""nettrim: Net-Trim pruning of trained PyTorch models (the torch side; the layer math lives in `solvers`)."""

__version__ = "0.1.0"
