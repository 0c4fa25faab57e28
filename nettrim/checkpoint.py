"""Partial results of a trim on disk: the layers already trimmed, so that a stopped trim resumes where it stopped.

A checkpoint is a folder: `state.json` (a fingerprint of what is trimmed and how, and the report rows of the
layers done, in the order they were done) and one safetensors file per layer holding its trimmed weight matrix U
(float64, exactly as it was set). Each file is written to a temporary file and renamed into place, a layer's
weights before the state that names them, so the folder is consistent whenever the trim stops (Ctrl-C, a
crash, a killed machine). A checkpoint written for another model, calibration or settings is refused, never
mixed in: the fingerprint covers the settings, every parameter and buffer of the model (the layers left as they
are and the normalizations between layers too) and a sample of every trimmed layer's calibration signal. A
checkpoint that cannot be read, or a folder that cannot be written, is refused by name before any layer is solved.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from .io import write_atomically
from .report import LayerReport

STATE = "state.json"
#: The samples (columns) of each trimmed layer's calibration signal X that the fingerprint hashes: what reaches a
#: layer through the model's code, not only through its parameters, changes them.
SIGNAL_SAMPLES = 256


def fingerprint(settings: dict, state: Iterable[tuple[str, np.ndarray]], signals: list[np.ndarray]) -> str:
    """A hash of the trim's settings (JSON-able, or their repr), the model's state (every parameter and buffer,
    as (name, values) pairs) and the first SIGNAL_SAMPLES samples of each trimmed layer's calibration signal:
    equal fingerprints mean the same layers come out of the same trim."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=repr).encode())
    for name, values in state:
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(values, dtype=np.float64).tobytes())
    for signal in signals:
        digest.update(np.ascontiguousarray(signal[:, :SIGNAL_SAMPLES], dtype=np.float64).tobytes())
    return digest.hexdigest()


class Checkpoint:
    """The layers a trim has finished, kept in `folder` under `key` (a fingerprint)."""

    def __init__(self, folder: str | Path, key: str):
        self.folder, self.key = Path(folder), key
        self.rows: list[LayerReport] = []
        self._read: dict[str, np.ndarray] = {}  # the layers' weights read (and so checked) when it was opened
        if self.folder.exists() and not self.folder.is_dir():
            raise ValueError(f"checkpoint: {self.folder} is a file; give a folder (created if missing)")
        self._check_writable()
        state = self.folder / STATE
        if state.exists():
            saved = self._saved(state)
            if saved.get("fingerprint") != key:
                raise ValueError(f"checkpoint: {self.folder} holds layers of another trim (another model, calibration "
                                 "or settings); delete it or give another folder")
            self.rows = self._rows(state, saved)

    def weights(self, name: str) -> np.ndarray:
        """The trimmed weight matrix U of a layer done (read once: handed over from the opening's check)."""
        if name in self._read:
            return self._read.pop(name)
        return self._load(name)

    def _load(self, name: str) -> np.ndarray:
        """A layer's weight file, or a ValueError naming it when it cannot be read."""
        path = self._file(name)
        try:
            return load_file(path)["U"]
        except (OSError, SafetensorError, KeyError) as error:
            raise ValueError(f"checkpoint: {path} (layer {name!r}) cannot be read ({type(error).__name__}: {error}); "
                             f"delete {self.folder} to start the trim again") from None

    def add(self, row: LayerReport, U: np.ndarray) -> None:
        """Record a finished layer: its weights, then the state naming it."""
        self.folder.mkdir(parents=True, exist_ok=True)
        write_atomically(self._file(row.name), lambda path: save_file({"U": np.ascontiguousarray(U, np.float64)}, path))
        self.rows.append(row)
        state = {"fingerprint": self.key, "layers": [asdict(done) for done in self.rows]}
        write_atomically(self.folder / STATE, lambda path: Path(path).write_text(json.dumps(state, indent=1)))

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def _check_writable(self) -> None:
        """Create the folder and write a file in it, so that a folder the trim cannot write is refused now, not
        after the first layer is solved."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.folder):
                pass
        except OSError as error:
            raise ValueError(f"checkpoint: {self.folder} cannot be written ({type(error).__name__}: {error}); give a "
                             "folder this process can write") from None

    def _saved(self, state: Path) -> dict:
        """The state file's content, or a ValueError naming it."""
        try:
            saved = json.loads(state.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"checkpoint: {state} cannot be read ({type(error).__name__}: {error}); delete "
                             f"{self.folder} to start the trim again") from None
        if not isinstance(saved, dict):
            raise ValueError(f"checkpoint: {state} is not a checkpoint's state; delete {self.folder} to start the "
                             "trim again")
        return saved

    def _rows(self, state: Path, saved: dict) -> list[LayerReport]:
        """The report rows of the layers done, each of whose weights can be read; or a ValueError naming the file."""
        try:
            rows = [LayerReport(**row) for row in saved["layers"]]
        except (KeyError, TypeError) as error:
            raise ValueError(f"checkpoint: {state} has no valid rows of layers ({type(error).__name__}: {error}); "
                             f"delete {self.folder} to start the trim again") from None
        self._read = {row.name: self._load(row.name) for row in rows}
        return rows

    def _file(self, name: str) -> Path:
        return self.folder / f"layer-{hashlib.sha256(name.encode()).hexdigest()[:16]}.safetensors"
