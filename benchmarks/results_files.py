"""What every benchmark shares: its --quick and --out options, and its results written as JSON next to its
markdown table (the table printed too)."""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
from pathlib import Path


def benchmark_parser(description: str, quick_help: str, out: Path) -> argparse.ArgumentParser:
    """The options every benchmark takes: --quick (what it shrinks to: `quick_help`) and --out (default `out`)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--out", type=Path, default=out)
    return parser


def machine() -> dict:
    """The Python and torch versions and torch's CPU threads, recorded with a torch benchmark's results."""
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads()}


def fingerprint(model) -> str:
    """The first 16 hex digits of SHA-256 over `model`'s state dict (names, dtypes, shapes and bytes).

    The zoo's training is seeded but not bitwise the same on every CPU (BLAS kernels differ), so a model cached on
    one machine can differ from the one another machine trains: a resumed benchmark compares fingerprints before it
    reuses rows measured on an earlier model."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        array = tensor.detach().cpu().contiguous().numpy()
        digest.update(f"{name}:{array.dtype}:{array.shape};".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()[:16]


def same_model(previous: dict | None, current: dict) -> bool:
    """Whether an earlier run's model entry (`previous`, from its JSON) describes this run's model (`current`):
    the same fingerprint. Files written before fingerprints were recorded never match: the test error alone does
    not tell models apart (two seed-0 LeNet-300-100s trained on different CPUs both had 1.50%, and 1.92% and 1.96%
    on the validation half)."""
    return bool(previous) and previous.get("fingerprint") == current["fingerprint"]


def write_results(out: Path, report: dict, table: str) -> None:
    """`report` to `out` (JSON) and `table` to the same path with the suffix .md."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    out.with_suffix(".md").write_text(table + "\n")
    print(table)
