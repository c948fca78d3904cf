"""Image folders (slimline.data.imagefolder): layouts, conversion, resizing, and each kind of
bad input ending in one line that names the file and the fix."""
from __future__ import annotations

import zlib

import numpy as np
import pytest
from PIL import Image

from slimline.data.imagefolder import load_imagefolder
from slimline.data.sources import DataError
from slimline.data.split import build_splits
from slimline.params import DataParams


def write(path, size=(10, 8), mode="L", value=None, seed=0):
    """An image of `size` (W, H) in `mode`, random pixels unless `value`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0]) + ((3,) if mode == "RGB" else ())
    arr = (np.full(shape, value, np.uint8) if value is not None
           else rng.integers(0, 256, shape, dtype=np.uint8))
    Image.fromarray(arr, mode=mode).save(path)


def folder(root, classes=("cat", "dog"), n=3, **kw):
    for c in classes:
        for i in range(n):
            # a stable seed: hash() of a str changes per process, and two equal seeds make two
            # identical images, which the duplicate check then drops
            write(root / c / f"{i}.png", seed=zlib.crc32(f"{root.name}/{c}/{i}".encode()), **kw)
    return root


def test_class_folders_give_sorted_classes_uint8_and_skip_other_files(tmp_path):
    root = folder(tmp_path / "imgs", classes=("zebra", "ant"))
    (root / "ant" / "notes.txt").write_text("not an image")
    raw, meta = load_imagefolder(root)
    assert meta["classes"] == ["ant", "zebra"] and meta["skipped_files"] == 1
    assert raw.x.dtype == np.uint8 and raw.x.shape == (6, 1, 8, 10)
    assert raw.y.tolist() == [0, 0, 0, 1, 1, 1] and raw.x_test is None and raw.x_val is None


def test_mixed_sizes_and_modes_are_converted_and_resized(tmp_path):
    root = tmp_path / "imgs"
    write(root / "a" / "0.png", size=(10, 8), mode="RGB", seed=1)
    write(root / "a" / "1.jpg", size=(20, 30), mode="L", seed=2)
    write(root / "b" / "0.bmp", size=(7, 7), mode="RGB", seed=3)
    write(root / "b" / "1.webp", size=(12, 12), mode="RGB", seed=4)
    raw, meta = load_imagefolder(root, image_size=[16, 12])
    assert raw.x.shape == (4, 3, 16, 12) and meta["channels"] == 3 and meta["resized"]
    gray, meta = load_imagefolder(root, image_size=[16, 12], channels=1)
    assert gray.x.shape == (4, 1, 16, 12) and meta["channels"] == 1
    with pytest.raises(DataError, match=r"1.jpg is 20x30 but .*0.png is 10x8: set data.image_size"):
        load_imagefolder(root)


def test_train_val_test_folders_are_kept_as_the_splits(tmp_path):
    root = tmp_path / "imgs"
    for split, n in (("train", 12), ("val", 3), ("test", 4)):
        folder(root / split, n=n, value=None)
    cfg = DataParams(source="imagefolder", path=str(root), min_per_class=1)
    raw, splits, dropped, meta = build_splits(cfg)
    assert {k: len(plan.rows) for k, plan in splits.items()} == {"train": 24, "val": 6, "test": 8}
    assert meta["classes"] == ["cat", "dog"]


def only_a_text_file(d):
    for p in d.iterdir():
        p.unlink()
    (d / "readme.txt").write_text("no images here")


@pytest.mark.parametrize("breakage, needle", [
    (lambda r: (r / "dog" / "2.png").write_bytes(b"\x89PNG broken"), r"dog/2.png: not a readable image"),
    (lambda r: [p.unlink() for p in (r / "dog").iterdir()], r"dog: class folder holds no images"),
    (lambda r: only_a_text_file(r / "dog"), r"dog: class folder holds no images"),
])
def test_bad_images_and_empty_classes_name_the_file(tmp_path, breakage, needle):
    root = folder(tmp_path / "imgs")
    breakage(root)
    with pytest.raises(DataError, match=needle):
        load_imagefolder(root)


def test_a_folder_without_class_folders_or_a_split_missing_a_class_is_refused(tmp_path):
    flat = tmp_path / "flat"
    write(flat / "0.png")
    with pytest.raises(DataError, match="no class folders"):
        load_imagefolder(flat)
    root = tmp_path / "imgs"
    folder(root / "train")
    folder(root / "test", classes=("cat",))
    with pytest.raises(DataError, match=r"test split has no folder for class\(es\) dog"):
        load_imagefolder(root)


def test_predict_resizes_and_converts_as_prepare_did(tmp_path):
    """With the bundle's resize flag, predict takes an RGB image of any size for a 1-channel
    16x12 model; without it, a wrong size is an error naming the fix."""
    from slimline.predict import load_inputs

    x = load_inputs(write_and(tmp_path / "big.png", size=(40, 30), mode="RGB"), (1, 16, 12), resize=True)
    assert x.shape == (1, 1, 16, 12)
    with pytest.raises(ValueError, match="resize it first"):
        load_inputs(tmp_path / "big.png", (1, 16, 12))


def write_and(path, **kw):
    write(path, **kw)
    return path


def test_normalize_for_imported_weights_becomes_the_first_layers_mean_and_std():
    from slimline.data.split import normalization
    from slimline.params import parse_params

    x = np.zeros((4, 3, 2, 2), np.uint8)
    cfg = parse_params({"data": {"normalize": {"scale": 1 / 255, "mean": [0.485, 0.456, 0.406],
                                               "std": [0.229, 0.224, 0.225]}}}).data
    mean, std = normalization(cfg, x)
    np.testing.assert_allclose(mean, [0.485 * 255, 0.456 * 255, 0.406 * 255])
    np.testing.assert_allclose(std, [0.229 * 255, 0.224 * 255, 0.225 * 255])
    one = parse_params({"data": {"normalize": {"mean": [0.5], "std": [0.5]}}}).data
    assert normalization(one, x)[0] == [127.5] * 3  # one value for every channel
    with pytest.raises(DataError, match="2 mean/std values but the images have 3 channel"):
        normalization(parse_params({"data": {"normalize": {"mean": [0.5, 0.5], "std": [1, 1]}}}).data, x)
    auto = normalization(parse_params({}).data, np.arange(16, dtype=np.uint8).reshape(1, 1, 4, 4))
    assert auto == ([7.5], [float(np.arange(16).std())])
