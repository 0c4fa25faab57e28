"""X (N x P) as blocks of samples (its columns): on the device whole, or on the host a block at a time.

The ADMM touches X only through three products, each of which splits over blocks of samples b,

    X A^T = sum_b X_b A_b^T     (N x k),   B X = [B X_b]_b   (k x P),   X X^T = sum_b X_b X_b^T   (N x N),

and through a gather of samples (the repair's violated ones, repair.py) from every block.

So a layer whose X does not fit the device next to the neurons' working arrays still runs: X stays in host
memory and each product moves it to the device one block at a time (sample chunking; the transfers then bound
the speed). With a single block that is already on the device the products are the plain ones, unchanged.
"""

from __future__ import annotations

import numpy as np

from .arrays import take_rows

#: Entries (rows times samples) of X that rows_gram gathers at once.
ROWS_GRAM_ENTRIES = 2**22


class SampleBlocks:
    """X as a list of column blocks; `resident` is X itself when it is one block on the device, else None.
    `be` is the arrays.Backend."""

    def __init__(self, be, blocks: list, resident: bool):
        self.be, self.blocks = be, blocks
        self.resident = blocks[0] if resident else None
        self.shape = (blocks[0].shape[0], sum(block.shape[1] for block in blocks))
        self.dtype = blocks[0].dtype
        self.bounds = np.cumsum([0] + [block.shape[1] for block in blocks])

    @classmethod
    def on_device(cls, be, X) -> SampleBlocks:
        return cls(be, [X], resident=True)

    @classmethod
    def on_host(cls, be, X: np.ndarray, samples_per_block: int, convert=None) -> SampleBlocks:
        """Blocks of `samples_per_block` columns of the host array X, each `convert`ed once (kept on the host)."""
        P = X.shape[1]
        blocks = [X[:, first:first + samples_per_block] for first in range(0, P, samples_per_block)]
        return cls(be, [np.ascontiguousarray(convert(block)) if convert else block for block in blocks],
                   resident=False)

    @property
    def device_dtype(self):
        """The dtype of the blocks on the device (the namespace's)."""
        return self.resident.dtype if self.resident is not None else self.be.dtype(self.dtype)

    def columns(self, indices):
        """X[:, indices] on the device for the device integer array `indices` (samples, gathered from every
        block: one transfer of the indices when X is streamed)."""
        if self.resident is not None:
            return self.be.xp.take(self.resident, indices, axis=1)
        wanted = self.be.to_host(indices)
        gathered = np.empty((self.shape[0], wanted.size), dtype=self.dtype)
        block_of = np.searchsorted(self.bounds, wanted, side="right") - 1
        for number, block in enumerate(self.blocks):
            chosen = block_of == number
            gathered[:, chosen] = block[:, wanted[chosen] - self.bounds[number]]
        return self.be.asarray(gathered)

    def _on_device(self):
        """(samples slice, block on the device) for each block, moved one at a time."""
        for index, block in enumerate(self.blocks):
            yield slice(int(self.bounds[index]), int(self.bounds[index + 1])), self.be.asarray(block)

    def rows_gram(self, indices: np.ndarray, samples: np.ndarray, vector: np.ndarray) -> tuple:
        """(X_IJ X_IJ^T, X_IJ v_J) in float64 on the host, for host row indices I, host (P,) bools J and a host
        (P,) vector v: a slice of at most ROWS_GRAM_ENTRIES / |I| samples at a time, whose samples in J enter the
        products; never the |I| x P rows."""
        xp, be = self.be.xp, self.be
        index, step = be.asarray(indices), max(1, ROWS_GRAM_ENTRIES // max(len(indices), 1))
        gram = xp.zeros((len(indices),) * 2, dtype=xp.float64, device=be.device)
        product = xp.zeros(len(indices), dtype=xp.float64, device=be.device)
        blocks = [(slice(0, self.shape[1]), self.resident)] if self.resident is not None else self._on_device()
        for span, block in blocks:
            for first in range(0, block.shape[1], step):
                last = min(first + step, block.shape[1])
                chosen = span.start + first + np.flatnonzero(samples[span.start + first:span.start + last])
                if chosen.size:
                    part = take_rows(xp, block[:, first:last], index)
                    part = xp.astype(xp.take(part, be.asarray(chosen - span.start - first), axis=1), xp.float64)
                    gram = gram + part @ part.T
                    product = product + part @ be.asarray(vector[chosen])
        return be.to_host(gram), be.to_host(product)

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
        return self.be.xp.concat([B @ block for _, block in self._on_device()], axis=1)

    def gram(self):
        """X X^T in float64."""
        xp = self.be.xp
        total = 0
        for _, block in self._on_device():
            block = xp.astype(block, xp.float64)
            total = total + block @ block.T
        return total
