"""The documentation site (mkdocs.yml: the guides of docs/ and the API reference generated from the docstrings)
builds with every warning an error."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_docs_build_strictly_with_the_api_reference(tmp_path):
    built = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
                           cwd=ROOT, capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    api = (tmp_path / "api" / "solvers" / "index.html").read_text()
    assert "AdmmSettings" in api and "LayerProblem" in api
    assert "compress" in (tmp_path / "api" / "nettrim" / "index.html").read_text()
