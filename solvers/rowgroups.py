"""Groups of rows of U for the rows' objective (structure="rows"): consecutive blocks of `size` rows, and the rows
left after the last whole block (a bias row) one group each. Row i of U reads input feature i, so a group is one
input of the layer: a neuron of the previous layer (size 1), an input channel of a conv (its kh x kw rows), or a
channel flattened into a Linear (its h x w features). Written once over an array namespace `xp`.
"""

from __future__ import annotations

import numpy as np


def count(N: int, size: int) -> int:
    """The number of groups of N rows."""
    return N // size + N % size


def slices(N: int, size: int) -> list[slice]:
    """Each group's rows, in order."""
    whole = (N // size) * size
    return [slice(start, start + size) for start in range(0, whole, size)] + [slice(i, i + 1) for i in range(whole, N)]


def sums(xp, values, size: int):
    """(G,) the sums of the (N,) `values` over each group."""
    if size == 1:
        return values
    whole = (values.shape[0] // size) * size
    blocks = xp.sum(xp.reshape(values[:whole], (whole // size, size)), axis=1)
    return xp.concat([blocks, values[whole:]])


def firsts(xp, values, size: int):
    """(G,) the (N,) `values` at each group's first row (for values constant within groups)."""
    if size == 1:
        return values
    whole = (values.shape[0] // size) * size
    return xp.concat([values[:whole:size], values[whole:]])


def expand(xp, values, size: int, N: int):
    """(N,) each group's value from the (G,) `values`, repeated over its rows."""
    if size == 1:
        return values
    blocks = N // size
    whole = xp.reshape(xp.broadcast_to(values[:blocks, None], (blocks, size)), (blocks * size,))
    return xp.concat([whole, values[blocks:]])


def norms(xp, U, size: int):
    """(G,) the Frobenius norms ||U_g,:|| of U's (N, M) groups of rows."""
    return xp.sqrt(sums(xp, xp.sum(U * U, axis=1), size))


def equilibration_scale(row_norms: np.ndarray, size: int) -> np.ndarray:
    """(N,) the rows' scale D of the ADMM's equilibration, constant within each group (the root mean square of
    its rows' norms), so that the rows' objective stays a weighted sum of group norms in the scaled variables."""
    mean_squares = sums(np, row_norms**2, size) / sums(np, np.ones_like(row_norms), size)
    scale = expand(np, np.sqrt(mean_squares), size, row_norms.size)
    return np.where(scale > 0, scale, 1.0)
