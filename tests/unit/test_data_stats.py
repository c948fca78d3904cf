"""prepare's normalisation statistics read chunk by chunk (slimline/data/stats.py): the bits
numpy gives for the whole array, for any chunk size."""
import math

import numpy as np
import pytest

from slimline.data import stats


def numpy_whole(x):
    xf = x.astype(np.float64)
    return xf.mean(axis=(0, 2, 3)), xf.std(axis=(0, 2, 3))


def chunked(x, size):
    return stats.mean_std(lambda: (x[i:i + size] for i in range(0, len(x), size)), len(x))


@pytest.mark.parametrize("shape", [(401, 1, 27, 29), (257, 3, 17, 23)], ids=["gray", "rgb"])
def test_any_chunk_size_gives_numpys_bits(shape, monkeypatch):
    # skewed pixels, as photos and digits have them: a plain uniform draw would hide little
    x = (np.random.default_rng(0).beta(0.4, 0.9, shape) * 255).astype(np.uint8)
    want = numpy_whole(x)
    # a small subtree, so the one-channel sum walks several levels of numpy's pairwise tree
    monkeypatch.setattr(stats, "SUBTREE", 4096)
    for size in (1, 7, 64, 10_000):
        got = chunked(x, size)
        assert [a.tobytes() for a in got] == [a.tobytes() for a in want], size


def test_the_exact_variance_is_not_numpys():
    """Why numpy's order is emulated: the exactly rounded std differs in the last bit here."""
    from fractions import Fraction

    x = np.random.default_rng(0).integers(0, 256, (3500, 1, 28, 28), dtype=np.uint8)
    n, s1 = x.size, int(x.sum(dtype=np.int64))
    s2 = int((x.astype(np.int64) ** 2).sum())
    exact = math.sqrt(Fraction(s2, n) - Fraction(s1, n) ** 2)
    _, std = numpy_whole(x)
    assert exact != std[0] and chunked(x, 1000)[1][0] == std[0]


def test_bad_chunks_are_refused():
    x = np.zeros((4, 1, 3, 3), np.uint8)
    with pytest.raises(ValueError, match="not float32"):
        stats.mean_std(lambda: [x.astype(np.float32)], 4)
    with pytest.raises(ValueError, match="held 4 images, not the 5 promised"):
        stats.mean_std(lambda: [x], 5)


def test_the_tree_splits_where_numpys_pairwise_sum_does(monkeypatch):
    """Summed subtree by subtree, a run of values gives numpy's own sum of it: signed values
    that span 16 orders of magnitude cancel differently under any other split or order."""
    rng = np.random.default_rng(1)
    v = rng.choice([-1.0, 1.0], 100_003) * 10.0 ** rng.uniform(-8, 8, 100_003)
    monkeypatch.setattr(stats, "SUBTREE", 128)  # numpy's block: every split is ours
    chunks = (v[i:i + 999] for i in range(0, len(v), 999))
    assert stats._tree_sum(stats._Values(chunks), len(v)) == np.add.reduce(v)


def test_float_images_are_summed_in_blocks(monkeypatch):
    """Float sources: the statistics of numpy's whole-array expression (to rounding), from
    blocks of images; several blocks and one give the same values."""
    x = np.random.default_rng(3).normal(0.3, 2.0, (37, 3, 5, 4)).astype(np.float32)
    whole = x.astype(np.float64)
    one_block = stats.float_mean_std(x)
    monkeypatch.setattr(stats, "FLOAT_BLOCK_BYTES", 5 * 3 * 5 * 4 * 8)  # 5 images a block
    mean, std = stats.float_mean_std(x)
    np.testing.assert_allclose(mean, whole.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(std, whole.std(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(mean, one_block[0], rtol=1e-12)
    np.testing.assert_allclose(std, one_block[1], rtol=1e-12)
