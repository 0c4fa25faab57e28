"""The benchmark scripts run end to end in their quick mode (so they cannot rot), and say what they measure."""

import importlib.util
import json
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_solvers_benchmark_quick(tmp_path):
    out = tmp_path / "solvers.json"
    report = _load("solvers").main(["--quick", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["layer"]["P"] == 400 and saved["layer"]["N"] == 785
    assert set(saved["runs"]) == {"admm", "cvxpy-scs", "published"}
    admm = report["runs"]["admm"]
    assert admm["status"] == "optimal"
    assert admm["neurons_over_budget_1e-3"] == 0
    assert admm["max_violation_over_max_y"] <= 1e-5
    assert "| admm |" in out.with_suffix(".md").read_text()
