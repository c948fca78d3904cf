"""Per-channel mean and std of uint8 images, chunk by chunk, with the bits numpy gives for
the whole array at once:

    x.astype(np.float64).mean(axis=(0, 2, 3)), x.astype(np.float64).std(axis=(0, 2, 3))

prepare's normalisation has always been that expression, and data/prepared's md5 holds its
bits. So the statistics of a train split that is read in chunks (one too large for memory)
must come out the same for any chunk size, and the same as before. A float sum's bits
depend on the order of its additions, so this module adds in numpy's order:

- the mean: the pixels' exact integer sum, divided once by the count (numpy's float sum of
  integer-valued doubles is exact below 2**53, so its order does not matter);
- the variance: numpy sums the squared deviations (v - mean)**2, each rounded on its own,
  so a 256-entry table per channel gives them; the order of their sum is numpy's reduction
  loop (numpy 2.x, `DOUBLE_pairwise_sum` in loops_utils.h.src):
  - one channel: the channel, image and pixel axes merge into one loop over every value,
    summed by one pairwise tree (blocks of 128; a run splits at half its length, rounded
    down to a multiple of 8). The tree is walked left to right over the chunks, and each
    subtree of up to SUBTREE values is summed by numpy itself (`np.add.reduce` of a 1-D
    array is exactly that subtree's pairwise sum);
  - several channels: one loop per image plane (pairwise), and each channel's planes added
    in image order.
Two passes over the data: the mean first, then the deviations. Memory: one chunk and one
subtree. `tests/unit/test_data_stats.py` checks the bits against numpy on each layout, so a
numpy release that changes its loops fails there first.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import numpy as np

SUBTREE = 1 << 20  # values summed by one np.add.reduce: 8 MB of float64


def mean_std(chunks: Callable[[], Iterable[np.ndarray]], count: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std), float64 per channel, of the `count` uint8 images (N, C, H, W) that
    `chunks()` yields in order (it is called twice: one pass each)."""
    sums, shape, seen = None, None, 0
    for chunk in chunks():
        chunk = _checked(chunk, shape)
        shape = chunk.shape[1:]
        seen += len(chunk)
        s = chunk.reshape(len(chunk), shape[0], -1).sum(axis=(0, 2), dtype=np.int64)
        sums = s if sums is None else sums + s
    if seen != count or not count:
        raise ValueError(f"mean_std: the chunks held {seen} images, not the {count} promised (> 0)")
    values = count * int(np.prod(shape[1:]))
    if int(sums.max()) >= 2 ** 53:
        raise ValueError(f"mean_std: {values} pixels sum past float64's exact integers")
    mean = sums.astype(np.float64) / np.float64(values)  # numpy: true_divide(float sum, count)
    tables = np.square(np.arange(256, dtype=np.float64)[None, :] - mean[:, None])  # (C, 256)
    if shape[0] == 1:
        deviations = _Values(tables[0][_checked(c, shape).reshape(-1)] for c in chunks())
        squares = [0.0 + _tree_sum(deviations, values)]
    else:
        squares = [0.0] * shape[0]
        for chunk in chunks():
            chunk = _checked(chunk, shape).reshape(len(chunk), shape[0], -1)
            for c in range(shape[0]):
                planes = np.add.reduce(tables[c][chunk[:, c]], axis=1)  # pairwise, one per image
                acc = squares[c]
                for v in planes.tolist():  # in image order, as numpy's outer loop adds them
                    acc += v
                squares[c] = acc
    return mean, np.sqrt(np.asarray(squares, dtype=np.float64) / np.float64(values))


def _checked(chunk: np.ndarray, shape: tuple | None) -> np.ndarray:
    chunk = np.ascontiguousarray(chunk)
    if chunk.dtype != np.uint8 or chunk.ndim != 4 or (shape is not None and chunk.shape[1:] != shape):
        raise ValueError(f"mean_std takes uint8 (N, C, H, W) chunks of one shape, not {chunk.dtype} "
                         f"{chunk.shape}")
    return chunk


class _Values:
    """The float64 values of a stream of flat arrays, taken in runs of any length."""

    def __init__(self, arrays: Iterable[np.ndarray]):
        self._arrays: Iterator[np.ndarray] = iter(arrays)
        self._buf, self._pos = np.empty(0), 0

    def take(self, n: int) -> np.ndarray:
        parts = []
        while n:
            if self._pos == len(self._buf):
                self._buf, self._pos = next(self._arrays), 0
                continue
            part = self._buf[self._pos:self._pos + n]
            self._pos += len(part)
            n -= len(part)
            parts.append(part)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _tree_sum(values: _Values, n: int) -> float:
    """numpy's pairwise sum of the next n values, left subtree first."""
    if n <= SUBTREE:
        return float(np.add.reduce(values.take(n)))  # 0.0 + the subtree's sum: the same for sums >= 0
    half = n // 2
    half -= half % 8
    left = _tree_sum(values, half)
    return left + _tree_sum(values, n - half)


FLOAT_BLOCK_BYTES = 8 << 20  # float64 bytes of images per block of float_mean_std


def float_mean_std(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std), float64 per channel, of float images (N, C, H, W), summed over blocks of
    images whose size depends only on the image shape: the bits never depend on how the
    caller reads the split, and no float64 copy of it is made. (Float sums have no exact
    order-free form like uint8's integer sums, so these are not numpy's whole-array bits.)"""
    per_image = int(np.prod(x.shape[1:])) * 8
    block = max(1, FLOAT_BLOCK_BYTES // per_image)
    values = len(x) * int(np.prod(x.shape[2:]))
    sums = np.zeros(x.shape[1])
    for i in range(0, len(x), block):
        sums += x[i:i + block].astype(np.float64).sum(axis=(0, 2, 3))
    mean = sums / values
    squares = np.zeros(x.shape[1])
    for i in range(0, len(x), block):
        d = x[i:i + block].astype(np.float64) - mean[None, :, None, None]
        squares += np.square(d).sum(axis=(0, 2, 3))
    return mean, np.sqrt(squares / values)
