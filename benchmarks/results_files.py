"""What every benchmark shares: its --quick and --out options, and its results written as JSON next to its
markdown table (the table printed too)."""

from __future__ import annotations

import argparse
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


def write_results(out: Path, report: dict, table: str) -> None:
    """`report` to `out` (JSON) and `table` to the same path with the suffix .md."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    out.with_suffix(".md").write_text(table + "\n")
    print(table)
