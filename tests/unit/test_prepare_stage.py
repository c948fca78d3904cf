"""The prepare stage: splits, statistics, and validation failures that leave outputs untouched."""
import argparse
import gzip
import json
import sys

import numpy as np
import pytest

from slimline.data.dataset import load_prepared
from slimline.data.raw import DataError
from slimline.errors import StageError
from slimline.params import parse_params
from tasks.prepare import _args, prepare
from tests.support.project import sh, tree_digest

K = 4  # classes in the synthetic sets


def synthetic(n_per_class=12, h=10, w=10, seed=0):
    """Distinct random images with K classes; a separate test split of half the size."""
    rng = np.random.default_rng(seed)

    def make(n):
        x = rng.integers(0, 256, size=(n * K, h, w)).astype(np.float32)
        return x, np.repeat(np.arange(K), n)

    x, y = make(n_per_class)
    xt, yt = make(n_per_class // 2)
    return {"x": x, "y": y, "x_test": xt, "y_test": yt}


def run_prepare(tmp_path, arrays, chunk=None, **data):
    if arrays is not None:
        np.savez(tmp_path / "src.npz", **arrays)
        data = {"source": "npz", "path": str(tmp_path / "src.npz"), **data}
    params = parse_params({"data": {"min_per_class": 3, "val_fraction": 0.25, **data},
                           "quantize": {"calibration_batches": 1, "calibration_batch_size": 8}})
    prepare(params, argparse.Namespace(out=tmp_path / "data" / "prepared", chunk=chunk))
    return load_prepared(tmp_path / "data" / "prepared")


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the stage writes reports/ relative to the project root
    return tmp_path


def test_npz_source_split_and_stats(workdir):
    arrays = synthetic()
    prep = run_prepare(workdir, arrays)
    sizes = {k: len(v[1]) for k, v in prep.splits.items()}
    assert sizes == {"train": 36, "val": 12, "test": 24}  # val: 25% of each class of 12
    for x, y in prep.splits.values():
        assert x.shape[1:] == (1, 10, 10)
        assert sorted(np.unique(y)) == list(range(K))  # stratified: every class everywhere
    train_x = prep.splits["train"][0].astype(np.float64)
    assert prep.meta["mean"] == pytest.approx([train_x.mean()])  # train only, no leakage
    assert prep.meta["std"] == pytest.approx([train_x.std()])
    report = json.loads((workdir / "reports/prepare.json").read_text())
    assert report["validation"]["success"] and report["sizes"] == sizes


def test_same_seed_same_bytes_other_seed_other_split(workdir):
    arrays = synthetic()
    run_prepare(workdir, arrays)
    first = tree_digest(workdir / "data" / "prepared")
    run_prepare(workdir, arrays)
    assert tree_digest(workdir / "data" / "prepared") == first
    run_prepare(workdir, arrays, seed=1)
    assert tree_digest(workdir / "data" / "prepared") != first


def test_limit_is_a_stratified_cap(workdir):
    prep = run_prepare(workdir, synthetic(n_per_class=40), limit=60, test_fraction=0.2)
    total = sum(len(v[1]) for v in prep.splits.values())
    assert 55 <= total <= 65
    assert all(np.bincount(v[1], minlength=K).min() > 0 for v in prep.splits.values())


def image_folder(root, n=8, broken=None):
    """K classes of n distinct 6x5 RGB PNGs; `broken` (class, index) is not an image."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(K):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(n):
            path = root / f"c{c}" / f"{i:02d}.png"
            if (c, i) == broken:
                path.write_bytes(b"\x89PNG cut short")
            else:
                Image.fromarray(rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)).save(path)
    return {"source": "imagefolder", "path": str(root)}


@pytest.mark.parametrize("chunk", ["0", "-3", "1.5", "many"])
def test_chunk_must_be_a_positive_whole_number(chunk, capsys):
    parser = argparse.ArgumentParser()
    _args(parser)
    assert parser.parse_args(["--out", "o", "--chunk", "7"]).chunk == 7
    with pytest.raises(SystemExit):
        parser.parse_args(["--out", "o", "--chunk", chunk])
    assert f"--chunk: {chunk!r} is not a whole number of images >= 1" in capsys.readouterr().err


@pytest.mark.parametrize("source", ["npz", "imagefolder"])
def test_prepared_bytes_do_not_depend_on_the_chunk_size(workdir, source):
    """Float pixels from an npz, uint8 from decoded images: 7 or 10,000 images at a time
    write the same files, and the decoded images' scratch folder is gone after."""
    arrays, data = (synthetic(), {}) if source == "npz" else (None, image_folder(workdir / "imgs"))
    digests = []
    for chunk in (7, 10_000):
        prep = run_prepare(workdir, arrays, chunk=chunk, **data)
        digests.append(tree_digest(workdir / "data"))
    assert digests[0] == digests[1]
    assert sorted(p.name for p in (workdir / "data").iterdir()) == ["prepared"]
    assert prep.splits["train"].x.dtype == (np.float32 if source == "npz" else np.uint8)


def test_a_corrupt_image_mid_stream_stops_prepare_naming_it_with_the_output_kept(workdir):
    run_prepare(workdir, None, **image_folder(workdir / "good"))
    before = tree_digest(workdir / "data")
    with pytest.raises(DataError, match=r"c2/05.png: not a readable image.*fix or delete"):
        run_prepare(workdir, None, chunk=3, **image_folder(workdir / "bad", broken=(2, 5)))
    assert tree_digest(workdir / "data") == before
    assert sorted(p.name for p in (workdir / "data").iterdir()) == ["prepared"]  # no scratch left


def corrupt(kind, a):
    x, y, xt = a["x"], a["y"], a["x_test"]
    if kind == "nan":
        x[3, 2, 2] = np.nan
    elif kind == "out_of_range":
        x[5, 0, 0] = 300.0
    elif kind == "constant":
        x[7] = 17.0
    elif kind == "label":
        y[0] = K  # outside 0..K-1 with num_classes fixed
    elif kind == "missing_class":
        keep = y != 2
        a["x"], a["y"] = x[keep], y[keep]
    elif kind == "too_few":
        keep = (y != 1) | (np.cumsum(y == 1) <= 2)
        a["x"], a["y"] = x[keep], y[keep]
    elif kind == "leak":
        xt[0] = x[0]
    return a


@pytest.mark.parametrize("kind, check, needle", [
    ("nan", "pixels_finite", "NaN"),
    ("out_of_range", "pixels_in_range", "outside [0, 255]"),
    ("constant", "no_constant_images", "constant"),
    ("label", "labels_in_range", str(K)),
    ("missing_class", "train_has_all_classes", "2"),
    ("too_few", "min_per_class", "data.min_per_class"),
    ("leak", "no_split_leakage", "test["),
])
def test_validation_failure_names_problem_and_keeps_previous_output(workdir, monkeypatch, kind, check,
                                                                    needle):
    from slimline.data import validate

    monkeypatch.setattr(validate, "_CHUNK_BYTES", 3 * 400)  # pixel statistics three images at a time
    run_prepare(workdir, synthetic())
    before = tree_digest(workdir / "data")
    report_before = (workdir / "reports/prepare.json").read_bytes()
    with pytest.raises(StageError) as exc:
        run_prepare(workdir, corrupt(kind, synthetic()), num_classes=K)
    msg = str(exc.value)
    assert "data validation failed" in msg and check in msg and needle in msg, msg
    assert tree_digest(workdir / "data") == before  # nothing lost or half-written
    assert (workdir / "reports/prepare.json").read_bytes() == report_before


def test_cli_failure_exits_2_with_readable_message(tmp_path, workdir):
    """Run as a program: a truncated IDX file names itself; no traceback, no output."""
    from tests.support.project import ROOT

    src = tmp_path / "idx"
    src.mkdir()
    images = np.zeros((4, 6, 6), np.uint8)
    header = (0x803).to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in images.shape)
    (src / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(header + images.tobytes()[:-5]))
    labels = np.zeros(4, np.uint8)
    (src / "train-labels-idx1-ubyte").write_bytes((0x801).to_bytes(4, "big") + (4).to_bytes(4, "big")
                                                  + labels.tobytes())
    (tmp_path / "params.yaml").write_text(f"data:\n  source: idx\n  path: {src}\n")
    proc = sh([sys.executable, "-m", "tasks.prepare", "--out", "data/prepared"], cwd=tmp_path, check=False,
              PYTHONPATH=str(ROOT))
    env_note = f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode == 2, env_note
    assert "train-images-idx3-ubyte.gz" in proc.stderr and "truncated" in proc.stderr, env_note
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "data").exists()
