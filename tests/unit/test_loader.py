"""Batches read per batch (slimline.data.loader): the rows asked for, in order, by this
process or by workers; the global RNG untouched; a dead worker an error, not a hang."""
from __future__ import annotations

import os
import signal

import numpy as np
import pytest
import torch

from slimline.data.dataset import Split, write_split
from slimline.data.loader import batches, in_order
from slimline.errors import StageError
from slimline.params import LoaderParams

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    path = tmp_path_factory.mktemp("split") / "train.safetensors"
    x = np.arange(23, dtype=np.uint8).reshape(23, 1, 1, 1).repeat(4, axis=3)
    write_split(path, x, np.arange(23) * 10)
    return Split(path)


@pytest.mark.parametrize("workers", [0, 2])
def test_each_batch_is_the_rows_asked_for_in_order(split, workers):
    rng = np.random.default_rng(0)
    order = rng.permutation(23)
    rows = [order[:10], order[10:20], order[20:]]
    got = list(batches(split, rows, CPU, LoaderParams(workers=workers, prefetch=1)))
    assert [x[:, 0, 0, 0].tolist() for x, _ in got] == [r.tolist() for r in rows]
    assert [y.tolist() for _, y in got] == [(r * 10).tolist() for r in rows]
    assert got[0][0].dtype == torch.uint8 and got[0][1].dtype == torch.int64


def test_in_order_covers_a_split_once_up_to_its_end(split):
    assert in_order(23, 10) == [slice(0, 10), slice(10, 20), slice(20, 23)]
    assert in_order(0, 10) == []
    seen = torch.cat([y for _, y in batches(split, in_order(23, 10), CPU)])
    assert seen.tolist() == list(range(0, 230, 10))


def test_reading_batches_leaves_the_global_rng_alone(split):
    """Dropout draws from the global RNG, whose state the checkpoints keep: a loader that
    took a worker seed from it would change every result."""
    before = torch.get_rng_state()
    list(batches(split, in_order(23, 5), CPU, LoaderParams(workers=2)))
    list(batches(split, in_order(23, 5), CPU))
    assert torch.equal(torch.get_rng_state(), before)


class _DiesInAWorker:
    shape = (8, 1, 1, 1)

    def __getitem__(self, rows):
        if torch.utils.data.get_worker_info() is not None:
            os.kill(os.getpid(), signal.SIGKILL)  # as the kernel's OOM killer would
        return np.zeros((len(np.atleast_1d(np.arange(8)[rows])), 1, 1, 1), np.uint8)


def test_a_worker_that_dies_ends_the_loop_with_an_error_naming_the_setting():
    data = (_DiesInAWorker(), np.arange(8))
    with pytest.raises(StageError, match="data loader worker died.*loader.workers"):
        list(batches(data, in_order(8, 2), CPU, LoaderParams(workers=2)))
