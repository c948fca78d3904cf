"""Tests for slimline.data.sources: valid round-trips and every malformed-input message."""
import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from slimline.data.sources import DataError, RawDataset, load_idx, load_mnist5k, load_npz, load_source

TRAIN_IMG, TRAIN_LAB = "train-images-idx3-ubyte", "train-labels-idx1-ubyte"
TEST_IMG, TEST_LAB = "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"


def idx_bytes(arr: np.ndarray) -> bytes:
    """Encode a uint8 array as IDX: magic 0x0000 08 <ndim>, big-endian dims, raw bytes."""
    arr = np.asarray(arr, dtype=np.uint8)
    return struct.pack(">I", 0x0800 | arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def write_idx(path: Path, arr: np.ndarray, gz: bool = False) -> Path:
    data = idx_bytes(arr)
    path = path.with_name(path.name + ".gz") if gz else path
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def make_folder(folder: Path, n=7, h=10, w=12, n_test=3, gz=False, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    x, y = rng.integers(0, 256, (n, h, w)), rng.integers(0, 10, n)
    paths = {TRAIN_IMG: write_idx(folder / TRAIN_IMG, x, gz), TRAIN_LAB: write_idx(folder / TRAIN_LAB, y, gz)}
    xt = yt = None
    if n_test:
        xt, yt = rng.integers(0, 256, (n_test, h, w)), rng.integers(0, 10, n_test)
        paths[TEST_IMG] = write_idx(folder / TEST_IMG, xt, gz)
        paths[TEST_LAB] = write_idx(folder / TEST_LAB, yt, gz)
    return x, y, xt, yt, paths


def raises(fn, *args, match: str, names) -> str:
    """Call fn, expect DataError whose message matches `match` and names each of `names`."""
    with pytest.raises(DataError, match=match) as ei:
        fn(*args)
    msg = str(ei.value)
    for name in [names] if isinstance(names, (str, Path)) else names:
        assert str(name) in msg, msg
    return msg


# ---------------------------------------------------------------- IDX valid

@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("n_test", [0, 3])
def test_idx_roundtrip(tmp_path, gz, n_test):
    x, y, xt, yt, paths = make_folder(tmp_path / "d", gz=gz, n_test=n_test)
    ds = load_idx(tmp_path / "d")
    assert isinstance(ds, RawDataset) and ds.source == "idx"
    assert ds.x.shape == (7, 1, 10, 12) and ds.x.dtype == np.uint8
    assert ds.y.dtype == np.int64 and ds.y.shape == (7,)
    # read-only memory maps: pages are read as rows are used, and the source can't be changed
    assert isinstance(ds.x, np.memmap) and not ds.x.flags.writeable
    np.testing.assert_array_equal(ds.x[:, 0], x)
    np.testing.assert_array_equal(ds.y, y)
    if n_test:
        assert ds.x_test.shape == (3, 1, 10, 12) and ds.y_test.dtype == np.int64
        np.testing.assert_array_equal(ds.x_test[:, 0], xt)
        np.testing.assert_array_equal(ds.y_test, yt)
    else:
        assert ds.x_test is None and ds.y_test is None
    assert sorted(ds.files) == sorted(str(p) for p in paths.values())


def test_idx_dotted_names_and_dispatch(tmp_path):
    folder = tmp_path / "d"
    make_folder(folder, n_test=0)
    (folder / TRAIN_IMG).rename(folder / "train-images.idx3-ubyte")
    ds, _ = load_source("idx", str(folder))
    assert ds.x.shape == (7, 1, 10, 12)


def _peak_bytes(fn, *args):
    """What fn allocates at its peak (numpy registers its buffers with tracemalloc)."""
    import tracemalloc

    tracemalloc.start()
    try:
        result = fn(*args)
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("gz", [False, True])
def test_idx_is_read_per_block(tmp_path, gz):
    """16 MB of images: a raw file is mapped where it lies, a .gz inflated into scratch a block
    at a time; neither is ever whole in memory."""
    x = (np.arange(8000 * 2000, dtype=np.int64) % 251).astype(np.uint8).reshape(8000, 40, 50)
    folder, scratch = tmp_path / "d", tmp_path / "scratch"
    folder.mkdir()
    scratch.mkdir()
    write_idx(folder / TRAIN_IMG, x, gz)
    write_idx(folder / TRAIN_LAB, np.arange(8000) % 10, gz)
    ds, peak = _peak_bytes(load_idx, folder, scratch)
    assert peak < 8 << 20, peak  # the file is 16 MB
    assert Path(ds.x.filename).parent == (scratch if gz else folder)
    np.testing.assert_array_equal(ds.x[-3:, 0], x[-3:])


# ---------------------------------------------------------------- IDX malformed

def _truncate(p: Path):
    p.write_bytes(p.read_bytes()[:-5])


def _garbage_tail(p: Path):
    p.write_bytes(p.read_bytes() + b"xx")


def _bad_magic(p: Path):
    p.write_bytes(struct.pack(">I", 0x0D03) + p.read_bytes()[4:])


def _empty(p: Path):
    p.write_bytes(b"")


@pytest.mark.parametrize("mutate, target, match", [
    (_truncate, TRAIN_IMG, "truncated"),
    (_garbage_tail, TRAIN_IMG, "trailing garbage"),
    (_bad_magic, TRAIN_IMG, "bad IDX magic number 0x00000d03, expected 0x00000803"),
    (_bad_magic, TRAIN_LAB, "expected 0x00000801"),
    (_empty, TRAIN_LAB, "empty"),
    (_truncate, TEST_IMG, "truncated"),
])
def test_idx_corrupt_file(tmp_path, mutate, target, match):
    *_, paths = make_folder(tmp_path / "d")
    mutate(paths[target])
    raises(load_idx, tmp_path / "d", match=match, names=paths[target])


def test_idx_swapped_files_hint(tmp_path):
    *_, paths = make_folder(tmp_path / "d", n_test=0)
    a, b = paths[TRAIN_IMG].read_bytes(), paths[TRAIN_LAB].read_bytes()
    paths[TRAIN_IMG].write_bytes(b)
    paths[TRAIN_LAB].write_bytes(a)
    raises(load_idx, tmp_path / "d", match="swapped", names=paths[TRAIN_IMG])


def test_idx_count_mismatch(tmp_path):
    *_, paths = make_folder(tmp_path / "d", n_test=0)
    write_idx(paths[TRAIN_LAB], np.zeros(6))
    raises(load_idx, tmp_path / "d", match="7 images .* 6 labels", names=[paths[TRAIN_IMG], paths[TRAIN_LAB]])


def test_idx_not_gzip(tmp_path):
    *_, paths = make_folder(tmp_path / "d", gz=True, n_test=0)
    paths[TRAIN_IMG].write_bytes(b"this is not gzip at all")
    raises(load_idx, tmp_path / "d", match="not gzip", names=paths[TRAIN_IMG])


def test_idx_truncated_gzip(tmp_path):
    *_, paths = make_folder(tmp_path / "d", gz=True, n_test=0)
    data = paths[TRAIN_LAB].read_bytes()
    paths[TRAIN_LAB].write_bytes(data[: len(data) // 2])
    raises(load_idx, tmp_path / "d", match="truncated", names=paths[TRAIN_LAB])


def test_idx_corrupt_gzip(tmp_path):
    *_, paths = make_folder(tmp_path / "d", gz=True, n_test=0)
    data = bytearray(paths[TRAIN_IMG].read_bytes())
    data[10:30] = b"\xff" * 20  # keep the gzip header, wreck the deflate stream
    paths[TRAIN_IMG].write_bytes(bytes(data))
    raises(load_idx, tmp_path / "d", match="gzip", names=paths[TRAIN_IMG])


def test_idx_missing_folder(tmp_path):
    raises(load_idx, tmp_path / "nope", match="does not exist", names=[tmp_path / "nope", TRAIN_IMG])


def test_idx_missing_labels_file(tmp_path):
    *_, paths = make_folder(tmp_path / "d")
    paths[TRAIN_LAB].unlink()
    msg = raises(load_idx, tmp_path / "d", match=f"missing {TRAIN_LAB}", names=tmp_path / "d")
    assert TEST_IMG in msg.split("found:")[1]  # lists what is actually there


@pytest.mark.parametrize("drop, missing", [(TEST_IMG, TEST_IMG), (TEST_LAB, TEST_LAB)])
def test_idx_half_test_pair(tmp_path, drop, missing):
    *_, paths = make_folder(tmp_path / "d")
    paths[drop].unlink()
    raises(load_idx, tmp_path / "d", match="half of the test pair", names=[tmp_path / "d", missing])


# ---------------------------------------------------------------- npz

@pytest.mark.parametrize("shape", [(6, 5, 4), (6, 3, 5, 4)])
def test_npz_roundtrip(tmp_path, shape):
    rng = np.random.default_rng(1)
    x, y = rng.random(shape).astype(np.float32), rng.integers(0, 3, 6).astype(np.float64)
    xt, yt = rng.random((2,) + shape[1:]).astype(np.float32), np.array([0, 2], dtype=np.int32)
    p = tmp_path / "d.npz"
    np.savez(p, x=x, y=y, x_test=xt, y_test=yt)
    ds, _ = load_source("npz", p)
    assert ds.source == "npz" and ds.files == [str(p)]
    assert ds.x.shape == (6, 1, 5, 4) if len(shape) == 3 else ds.x.shape == shape
    assert ds.x.dtype == np.float32 and ds.y.dtype == np.int64 and ds.y_test.dtype == np.int64
    np.testing.assert_array_equal(ds.x.reshape(x.shape), x)
    np.testing.assert_array_equal(ds.y, y.astype(np.int64))
    np.testing.assert_array_equal(ds.y_test, yt)
    assert ds.x_test.shape[1:] == ds.x.shape[1:]


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_npz_is_read_per_block(tmp_path, save):
    """A stored member is mapped where it lies in the archive, a compressed one inflated into
    scratch a block at a time; neither is ever whole in memory."""
    x = (np.arange(4000 * 1000, dtype=np.int64) % 251).astype(np.float32).reshape(4000, 1, 40, 25)
    p, scratch = tmp_path / "d.npz", tmp_path / "scratch"
    scratch.mkdir()
    save(p, x=x, y=np.arange(4000) % 10, x_test=x[:5], y_test=np.arange(5))
    ds, peak = _peak_bytes(load_npz, p, scratch)
    assert peak < 8 << 20, peak  # the file is 16 MB
    assert isinstance(ds.x, np.memmap) and not ds.x.flags.writeable
    assert Path(ds.x.filename).parent == (p.parent if save is np.savez else scratch)
    np.testing.assert_array_equal(ds.x[-3:], x[-3:])
    np.testing.assert_array_equal(ds.x_test, x[:5])


def test_npz_corrupt_stored_member(tmp_path):
    """A flipped byte in an uncompressed member is found by its CRC, though the array is mapped."""
    p = tmp_path / "d.npz"
    np.savez(p, x=np.zeros((50, 8, 8), np.uint8), y=np.arange(50))
    data = bytearray(p.read_bytes())
    data[data.index(b"\x00" * 64, 200) + 10] = 7  # inside x's pixels
    p.write_bytes(bytes(data))
    raises(load_npz, p, match="corrupt npz .*CRC", names=p)


def test_npz_fortran_order(tmp_path):
    p = tmp_path / "d.npz"
    x = np.asfortranarray(np.arange(4 * 2 * 3 * 5, dtype=np.uint8).reshape(4, 2, 3, 5))
    np.savez(p, x=x, y=np.arange(4))
    np.testing.assert_array_equal(load_npz(p).x, x)


def test_npz_without_test_split(tmp_path):
    p = tmp_path / "d.npz"
    np.savez(p, x=np.zeros((4, 2, 2), np.uint8), y=np.arange(4))
    ds = load_npz(p)
    assert ds.x_test is None and ds.y_test is None and ds.x.dtype == np.uint8


def _save(p, **arrays):
    np.savez(p, **arrays)


X4, Y4 = np.zeros((4, 3, 3)), np.arange(4)


@pytest.mark.parametrize("arrays, match", [
    (dict(x=X4), r"missing array 'y'; arrays present: \['x'\]"),
    (dict(images=X4, y=Y4), r"missing array 'x'"),
    (dict(x=X4, y=np.arange(5)), "4 samples but 'y' has 5"),
    (dict(x=np.zeros((4, 3)), y=Y4), r"shape \(4, 3\)"),
    (dict(x=X4, y=Y4 + 0.5), "not whole numbers"),
    (dict(x=np.zeros((0, 3, 3)), y=np.arange(0)), "empty"),
    (dict(x=X4, y=Y4, x_test=X4), "only one of 'x_test'/'y_test'"),
    (dict(x=X4, y=Y4, x_test=np.zeros((2, 4, 4)), y_test=np.arange(2)), "both splits must match"),
])
def test_npz_bad_content(tmp_path, arrays, match):
    p = tmp_path / "d.npz"
    _save(p, **arrays)
    raises(load_npz, p, match=match, names=p)


def test_npz_pickled_object_refused(tmp_path):
    p = tmp_path / "d.npz"
    np.savez(p, x=np.array([np.zeros((2, 2)), "evil"], dtype=object), y=np.arange(2))
    raises(load_npz, p, match="pickle", names=p)


@pytest.mark.parametrize("content", [b"definitely not a zip", b""])
def test_npz_corrupt(tmp_path, content):
    p = tmp_path / "d.npz"
    p.write_bytes(content)
    raises(load_npz, p, match="not a .npz", names=p)


def test_npz_truncated_zip(tmp_path):
    p = tmp_path / "d.npz"
    np.savez_compressed(p, x=np.random.default_rng(0).random((50, 8, 8)), y=np.arange(50))
    data = bytearray(p.read_bytes())
    data[100:400] = bytes(300)  # wreck a member's compressed bytes; the central directory survives
    p.write_bytes(bytes(data))
    raises(load_npz, p, match="npz", names=p)


def test_npz_missing_file(tmp_path):
    raises(load_npz, tmp_path / "no.npz", match="does not exist", names=tmp_path / "no.npz")


# ---------------------------------------------------------------- dispatch + mnist5k

@pytest.mark.parametrize("source, path, match", [
    ("idx", None, "needs a path"),
    ("npz", "", "needs a path"),
    ("cifar", None, "unknown data source"),
    ("mnist5k", "/some/where", "takes no path"),
])
def test_load_source_errors(source, path, match):
    with pytest.raises(DataError, match=match):
        load_source(source, path)


def test_mnist5k():
    ds = load_mnist5k()
    assert ds.source == "mnist5k" and ds.x_test is None and ds.y_test is None
    assert ds.x.shape == (5000, 1, 28, 28) and ds.x.dtype == np.uint8
    assert ds.y.dtype == np.int64
    np.testing.assert_array_equal(np.bincount(ds.y), [500] * 10)
    assert ds.x.max() == 255 and len(ds.files) == 1
