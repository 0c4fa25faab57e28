"""X (N x P) as blocks of samples (its columns): on the device whole, or on the host a block at a time.

The ADMM touches X only through three products, each of which splits over blocks of samples b,

    X A^T = sum_b X_b A_b^T     (N x k),   B X = [B X_b]_b   (k x P),   X X^T = sum_b X_b X_b^T   (N x N),

and through the rows of a neuron's support (the repair, repair.py), gathered from every block.

So a layer whose X does not fit the device next to the neurons' working arrays still runs: X stays in host
memory and each product moves it to the device one block at a time (sample chunking; the transfers then bound
the speed). With a single block that is already on the device the products are the plain ones, unchanged.
"""

from __future__ import annotations

import numpy as np

from .arrays import to_host


class SampleBlocks:
    """X as a list of column blocks; `resident` is X itself when it is one block on the device, else None;
    `max_rows` is how many of X's rows may be gathered on the device at once."""

    def __init__(self, xp, blocks: list, resident: bool, max_rows: int | None = None):
        self.xp, self.blocks = xp, blocks
        self.resident = blocks[0] if resident else None
        self.shape = (blocks[0].shape[0], sum(block.shape[1] for block in blocks))
        self.max_rows = self.shape[0] if max_rows is None else max_rows
        self.dtype = blocks[0].dtype
        self.bounds = np.cumsum([0] + [block.shape[1] for block in blocks])

    @classmethod
    def on_device(cls, xp, X) -> SampleBlocks:
        return cls(xp, [X], resident=True)

    @classmethod
    def on_host(cls, xp, X: np.ndarray, samples_per_block: int, convert=None, max_rows: int = 0) -> SampleBlocks:
        """Blocks of `samples_per_block` columns of the host array X, each `convert`ed once (kept on the host)."""
        P = X.shape[1]
        blocks = [X[:, first:first + samples_per_block] for first in range(0, P, samples_per_block)]
        return cls(xp, [np.ascontiguousarray(convert(block)) if convert else block for block in blocks],
                   resident=False, max_rows=max_rows)

    def __getitem__(self, rows):
        """X[rows] on the device, for integer indices `rows` (at most max_rows of them)."""
        if self.resident is not None:
            return self.resident[rows]
        rows = to_host(rows)
        if rows.size > self.max_rows:
            raise ValueError(f"{rows.size} rows of X do not fit the device next to the iteration (at most "
                             f"{self.max_rows})")
        return self.xp.asarray(np.concatenate([block[rows] for block in self.blocks], axis=1))

    def _on_device(self):
        """(samples slice, block on the device) for each block, moved one at a time."""
        for index, block in enumerate(self.blocks):
            yield slice(self.bounds[index], self.bounds[index + 1]), self.xp.asarray(np.ascontiguousarray(block))

    def times_transposed(self, *arrays) -> tuple:
        """X A^T for each A (k x P), in one pass over the blocks."""
        if self.resident is not None:
            return tuple(self.resident @ A.T for A in arrays)
        sums = [None] * len(arrays)
        for samples, block in self._on_device():
            for index, A in enumerate(arrays):
                term = block @ A[:, samples].T
                sums[index] = term if sums[index] is None else sums[index] + term
        return tuple(sums)

    def left_times(self, B):
        """B X for B (k x N)."""
        if self.resident is not None:
            return B @ self.resident
        out = None
        for samples, block in self._on_device():
            part = B @ block
            if out is None:
                out = self.xp.empty((B.shape[0], self.shape[1]), dtype=part.dtype)
            out[:, samples] = part
        return out

    def gram(self):
        """X X^T in float64."""
        total = 0
        for _, block in self._on_device():
            block = block.astype(np.float64, copy=False)
            total = total + block @ block.T
        return total
