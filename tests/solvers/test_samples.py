"""X in blocks of samples (solvers/samples.py): the products and sample gathers equal those of X itself."""

import numpy as np

from solvers.arrays import backend
from solvers.samples import SampleBlocks

BE = backend("cpu")


def test_blocks_of_samples_give_the_products_of_x():
    rng = np.random.default_rng(0)
    X, A, D, B = (rng.standard_normal(shape) for shape in [(7, 23), (3, 23), (2, 23), (4, 7)])
    streamed = SampleBlocks.on_host(BE, X, 5)
    resident = SampleBlocks.on_device(BE, X)
    assert len(streamed.blocks) == 5 and streamed.shape == X.shape and resident.resident is X
    for blocks in (streamed, resident):
        XA, XD = blocks.times_transposed(A, D)
        np.testing.assert_allclose(XA, X @ A.T, rtol=1e-13, atol=1e-13)
        np.testing.assert_allclose(XD, X @ D.T, rtol=1e-13, atol=1e-13)
        np.testing.assert_allclose(blocks.left_times(B), B @ X, rtol=1e-13, atol=1e-13)
        np.testing.assert_allclose(blocks.gram(), X @ X.T, rtol=1e-13, atol=1e-13)
        np.testing.assert_array_equal(blocks.columns(np.array([4, 0, 22, 5, 4])), X[:, [4, 0, 22, 5, 4]])


def test_converted_blocks():
    X = np.arange(24.0).reshape(3, 8)
    halves = SampleBlocks.on_host(BE, X, 4, lambda block: (block / 2).astype(np.float32))
    assert halves.dtype == np.float32 and all(block.flags.c_contiguous for block in halves.blocks)
    np.testing.assert_array_equal(halves.columns(np.array([7, 1])), X[:, [7, 1]] / 2)
