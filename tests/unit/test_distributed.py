"""Data-parallel training's parts that need no second process: the launcher's refusals, how
an epoch's rows are split over ranks, evaluation shards, each rank's RNG state on resume, and
the failed rank's message. (Two real ranks under torchrun: tests/e2e/test_distributed.py.)"""
import numpy as np
import pytest
import torch

from slimline.errors import StageError
from slimline.params import ParamsError, parse_params
from slimline.training import distributed
from slimline.training.distributed import Ranks, shard, step_rows
from slimline.training.loop import _set_rank_rng


def test_nproc_per_node_is_a_train_param():
    assert parse_params({}).train.distributed.nproc_per_node == 1
    four = parse_params({"train": {"distributed": {"nproc_per_node": 4}}})
    assert four.train.distributed.nproc_per_node == 4
    with pytest.raises(ParamsError, match="train.distributed.nproc_per_node"):
        parse_params({"train": {"distributed": {"nproc_per_node": 0}}})


def test_more_ranks_than_cores_gpus_or_batch_are_refused_with_the_numbers(monkeypatch):
    monkeypatch.setattr(distributed, "usable_cpus", lambda: 2)
    distributed.check(2, "cpu", 64)
    with pytest.raises(StageError, match="nproc_per_node is 3 but this machine has 2 CPU core"):
        distributed.check(3, "cpu", 64)
    with pytest.raises(StageError, match="batch_size 63 does not split over 2 ranks"):
        distributed.check(2, "cpu", 63)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(StageError, match="nproc_per_node is 2 but 1 CUDA device"):
        distributed.check(2, "cuda", 64)


def test_ranks_share_the_stages_threads():
    assert [distributed.threads_per_rank(4, n) for n in (1, 2, 3, 4, 8)] == [4, 2, 1, 1, 1]


@pytest.mark.parametrize("n, batch", [(10, 4), (9, 4), (7, 3), (1, 4)])
def test_one_process_cuts_the_order_into_batches(n, batch):
    """The rows fit() has always used: a last batch of one image joins the one before."""
    order = np.random.default_rng(n).permutation(n)
    rows = step_rows(order, batch, Ranks())
    np.testing.assert_array_equal(np.concatenate(rows), order)
    assert all(len(r) > 1 for r in rows) or n == 1
    assert [len(r) for r in rows[:-1]] == [batch] * (len(rows) - 1)


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_take_the_rows_of_one_processs_steps(world):
    """Each step's rows over the ranks are one process's step; every rank runs as many steps,
    and an epoch that does not divide is padded from its start, as DistributedSampler pads."""
    batch, order = 6 * world // 2, np.random.default_rng(0).permutation(36)
    one = step_rows(order, batch, Ranks())
    per_rank = [step_rows(order, batch, Ranks(r, world, r)) for r in range(world)]
    assert len({len(rows) for rows in per_rank}) == 1 and len(per_rank[0]) == len(one)
    for k, rows in enumerate(one):
        np.testing.assert_array_equal(np.sort(np.concatenate([p[k] for p in per_rank])), np.sort(rows))
    padded = [step_rows(order[:35], batch, Ranks(r, world, r)) for r in range(world)]
    seen = np.concatenate([np.concatenate(p) for p in padded])
    assert set(seen) == set(order[:35]) and len(seen) == world * -(-35 // world)


def test_evaluation_shards_cover_the_split_once():
    for n, world in [(10, 3), (2, 3), (1000, 2)]:
        parts = [shard(n, Ranks(r, world, r)) for r in range(world)]
        assert np.array_equal(np.concatenate([np.arange(n)[p] for p in parts]), np.arange(n))


def test_a_resumed_rank_gets_its_own_dropout_stream():
    states = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        states.append(torch.get_rng_state())
    for rank in (0, 1):
        torch.manual_seed(99)
        _set_rank_rng({"rank_rng": states}, Ranks(rank, 2, rank))
        assert torch.equal(torch.get_rng_state(), states[rank])
    with pytest.raises(StageError, match="RNG state of 2 rank.*not 3"):
        _set_rank_rng({"rank_rng": states}, Ranks(0, 3, 0))


def test_a_failed_rank_is_named_with_its_error(tmp_path):
    assert distributed.failure(tmp_path, 2, 1).startswith("a rank of 2 died without an error of its own")
    (tmp_path / "rank-1.txt").write_text("loss became nan in epoch 2\n")
    assert distributed.failure(tmp_path, 2, 1) == "rank 1 of 2 failed: loss became nan in epoch 2"
