"""Partial results of a trim on disk: the layers already trimmed, so that a stopped trim resumes where it stopped.

A checkpoint is a folder: `state.json` (a fingerprint of what is trimmed and how, and the report rows of the
layers done, in the order they were done) and one safetensors file per layer holding its trimmed weight matrix U
(float64, exactly as it was set). Each file is written to a temporary file and renamed into place, a layer's
weights before the state that names them, so the folder is consistent whenever the trim stops (Ctrl-C, a
crash, a killed machine). A checkpoint written for another model, calibration or settings is refused, never
mixed in.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from .io import write_atomically
from .report import LayerReport

STATE = "state.json"


def fingerprint(settings: dict, weights: list[np.ndarray], signals: np.ndarray) -> str:
    """A hash of the trim's settings (JSON-able, or their repr), the original weight matrices and the first
    layer's calibration signals: equal fingerprints mean the same layers come out of the same trim."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=repr).encode())
    for array in [*weights, signals]:
        digest.update(np.ascontiguousarray(array, dtype=np.float64).tobytes())
    return digest.hexdigest()


class Checkpoint:
    """The layers a trim has finished, kept in `folder` under `key` (a fingerprint)."""

    def __init__(self, folder: str | Path, key: str):
        self.folder, self.key = Path(folder), key
        self.rows: list[LayerReport] = []
        state = self.folder / STATE
        if self.folder.exists() and not self.folder.is_dir():
            raise ValueError(f"checkpoint: {self.folder} is a file; give a folder (created if missing)")
        if state.exists():
            saved = json.loads(state.read_text())
            if saved.get("fingerprint") != key:
                raise ValueError(f"checkpoint: {self.folder} holds layers of another trim (another model, calibration "
                                 "or settings); delete it or give another folder")
            self.rows = [LayerReport(**row) for row in saved["layers"]]

    def weights(self, name: str) -> np.ndarray:
        """The trimmed weight matrix U of a layer done."""
        return load_file(self._file(name))["U"]

    def add(self, row: LayerReport, U: np.ndarray) -> None:
        """Record a finished layer: its weights, then the state naming it."""
        self.folder.mkdir(parents=True, exist_ok=True)
        write_atomically(self._file(row.name), lambda path: save_file({"U": np.ascontiguousarray(U, np.float64)}, path))
        self.rows.append(row)
        state = {"fingerprint": self.key, "layers": [asdict(done) for done in self.rows]}
        write_atomically(self.folder / STATE, lambda path: Path(path).write_text(json.dumps(state, indent=1)))

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def _file(self, name: str) -> Path:
        return self.folder / f"layer-{hashlib.sha256(name.encode()).hexdigest()[:16]}.safetensors"
