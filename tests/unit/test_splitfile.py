"""A prepared split's file (slimline.data.splitfile): written in chunks with save_file's exact
bytes, read memory-mapped, and refused whole when damaged."""
from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import save_file

from slimline.data.dataset import Split, write_split
from slimline.data.raw import DataError
from slimline.data.splitfile import SplitWriter, open_split


@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.int64, np.uint16])
@pytest.mark.parametrize("n", [0, 1, 13])
def test_chunked_writes_are_save_files_bytes(tmp_path, dtype, n):
    rng = np.random.default_rng(n)
    x = rng.integers(0, 256, (n, 3, 5, 7)).astype(dtype)
    y = rng.integers(0, 10, n)
    save_file({"x": x, "y": y}, str(tmp_path / "ref"))
    for chunk in (1, 4, 10_000):
        write_split(tmp_path / "split", x, y, chunk=chunk)
        assert (tmp_path / "split").read_bytes() == (tmp_path / "ref").read_bytes(), (chunk, dtype)
    back_x, back_y = open_split(tmp_path / "split")
    assert back_x.dtype == dtype and np.array_equal(back_x, x) and np.array_equal(back_y, y)


def test_rows_are_gathered_in_the_order_given(tmp_path):
    x = np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1)
    y = np.arange(10) * 2
    write_split(tmp_path / "split", x, y, rows=np.array([7, 2, 9]), chunk=2, dtype=np.float32)
    split = Split(tmp_path / "split")
    assert split.x.dtype == np.float32 and split.x.ravel().tolist() == [7.0, 2.0, 9.0]
    assert split.y.tolist() == [14, 4, 18] and len(split) == 3


def test_a_split_pickles_as_its_path_not_its_pixels(tmp_path):
    import pickle

    write_split(tmp_path / "split", np.zeros((500, 1, 28, 28), np.uint8), np.zeros(500, np.int64))
    split = Split(tmp_path / "split")
    _ = split.x  # mapped
    blob = pickle.dumps(split)
    assert len(blob) < 1000
    again = pickle.loads(blob)
    assert again.x.shape == (500, 1, 28, 28)
    assert not again.x.flags.writeable  # a memory map nobody can scribble on


def test_an_interrupted_write_leaves_no_file(tmp_path):
    with pytest.raises(RuntimeError), SplitWriter(tmp_path / "split", 4, (1, 2, 2), np.uint8) as w:
        w.write(np.zeros((2, 1, 2, 2), np.uint8), np.zeros(2, np.int64))
        raise RuntimeError("a corrupt image, mid-stream")
    assert not (tmp_path / "split").exists()
    with pytest.raises(ValueError, match="2 of 4 rows"), \
            SplitWriter(tmp_path / "split", 4, (1, 2, 2), np.uint8) as w:
        w.write(np.zeros((2, 1, 2, 2), np.uint8), np.zeros(2, np.int64))
    assert not (tmp_path / "split").exists()


@pytest.mark.parametrize("damage, needle", [
    (lambda b: b[:-1], "truncated"),
    (lambda b: b[: len(b) // 2], "truncated"),
    (lambda b: b + b"\0", "trailing bytes"),
    (lambda b: b[:5], "not a safetensors file"),
    (lambda b: b.replace(b'"x":', b'"z":'), "header is unreadable or lacks x"),
    (lambda b: b[:8] + b"[" + b[9:], "header is unreadable"),
])
def test_a_damaged_file_is_refused_naming_it_and_the_fix(tmp_path, damage, needle):
    write_split(tmp_path / "train.safetensors", np.ones((6, 1, 4, 4), np.uint8), np.arange(6))
    path = tmp_path / "train.safetensors"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(DataError, match=needle) as err:
        open_split(path)
    assert "train.safetensors" in str(err.value) and "dvc checkout data/prepared" in str(err.value)


def test_a_stage_loading_a_truncated_split_is_stopped_before_any_work(tmp_path):
    from slimline.data.dataset import Prepared, load_prepared, save_prepared

    arrays = (np.ones((6, 1, 4, 4), np.uint8), np.arange(6))
    save_prepared(Prepared({s: arrays for s in ("train", "val", "test")}, {"input_shape": [1, 4, 4]}),
                  tmp_path)
    test = tmp_path / "test.safetensors"
    test.write_bytes(test.read_bytes()[:-10])
    with pytest.raises(DataError, match=r"test.safetensors: truncated"):
        load_prepared(tmp_path)
