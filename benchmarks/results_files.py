"""How every benchmark writes its results: the report as JSON next to its markdown table (and prints the table)."""

from __future__ import annotations

import json
from pathlib import Path


def write_results(out: Path, report: dict, table: str) -> None:
    """`report` to `out` (JSON) and `table` to the same path with the suffix .md."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    out.with_suffix(".md").write_text(table + "\n")
    print(table)
