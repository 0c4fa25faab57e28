"""Every notebook runs top to bottom in its QUICK mode (jupytext percent files executed with nbclient)."""

import json
from pathlib import Path

import jupytext
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["recovery_bounds", "cascade_vs_parallel", "compression"])
def test_notebook_runs_in_quick_mode(name, tmp_path, monkeypatch):
    monkeypatch.setenv("NETTRIM_QUICK", "1")
    monkeypatch.setenv("NETTRIM_FIGURES", str(tmp_path))
    notebook = jupytext.read(NOTEBOOKS / f"{name}.py")
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    errors = [output for cell in notebook.cells if cell.cell_type == "code"
              for output in cell.get("outputs", []) if output.get("output_type") == "error"]
    assert not errors, json.dumps(errors)[:2000]
    figures = list(tmp_path.glob("*.png"))
    assert figures and all(figure.stat().st_size > 5_000 for figure in figures)
