"""Tests for slimline/data/validate.py: clean data passes, each corruption fails its own check.

Data is tiny (10 classes x 8 random 8x8 images per split), so each
validate_splits call is a fraction of a second after the one-off GX import.
"""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from slimline.data.validate import CHECK_NAMES, Check, ValidationReport, validate_splits

ROOT = Path(__file__).resolve().parents[2]
NUM_CLASSES, PER_CLASS = 10, 8
KW = dict(num_classes=NUM_CLASSES, min_per_class=4, pixel_min=0.0, pixel_max=255.0,
          min_rows=100)


def make_splits(seed: int = 0) -> dict:
    """Distinct random uint8 images, PER_CLASS of every class in every split."""
    rng = np.random.default_rng(seed)
    splits = {}
    for name in ("train", "val", "test"):
        y = np.repeat(np.arange(NUM_CLASSES), PER_CLASS)
        x = rng.integers(0, 256, size=(len(y), 1, 8, 8), dtype=np.uint8)
        splits[name] = (x, y)
    return splits


def as_float(splits: dict, name: str) -> np.ndarray:
    """A float copy of one split's images (NaN/inf/out-of-range need floats)."""
    x, y = splits[name]
    splits[name] = (x.astype(np.float32), y)
    return splits[name][0]


def check(report: ValidationReport, name: str) -> Check:
    return next(c for c in report.checks if c.name == name)


def test_clean_data_passes_quietly(capfd, caplog):
    report = validate_splits(make_splits(), **KW)
    assert report.success, report.summary()
    assert [c.name for c in report.checks] == CHECK_NAMES
    assert all(c.success and c.message for c in report.checks)
    assert report.failures() == []
    assert report.summary() == f"data validation: all {len(CHECK_NAMES)} checks passed"
    # GX's tqdm "Calculating Metrics" bars and warnings must not reach the logs.
    err = capfd.readouterr().err
    assert "Calculating Metrics" not in err and "Warning" not in err
    assert not [r for r in caplog.records if r.name.startswith("great_expectations")]


# Each corruption edits fresh clean splits in place and may override keyword
# arguments; it names the check that must fail and facts its message must state.
def nan_pixel(s):
    as_float(s, "train")[3, 0, 0, 0] = np.nan


def inf_pixel(s):
    as_float(s, "val")[2, 0, 1, 1] = np.inf


def out_of_range(s):
    as_float(s, "train")[5, 0, 4, 4] = 300.0


def constant_image(s):
    s["test"][0][4] = 7


def label_outside(s):
    s["val"][1][1] = NUM_CLASSES


def missing_class(s):
    x, y = s["train"]
    s["train"] = (x[y != 3], y[y != 3])


def too_few_per_class(s):
    x, y = s["train"]
    keep = (y != 5) | (np.cumsum(y == 5) <= 2)  # only two images of class 5 stay
    s["train"] = (x[keep], y[keep])


def leaked_to_test(s):
    s["test"][0][6] = s["train"][0][0]


def no_class_3_in_test(s):
    x, y = s["test"]
    keep = y != 3
    s["test"] = (x[keep], y[keep])


def empty_split(s):
    x, y = s["val"]
    s["val"] = (x[:0], y[:0])


def too_few_rows(s):
    return {"min_rows": 1000}


CORRUPTIONS = [
    (nan_pixel, "pixels_finite", ["NaN", "train[3]"]),
    (inf_pixel, "pixels_finite", ["inf", "val[2]"]),
    (out_of_range, "pixels_in_range", ["outside [0, 255]", "max 300", "train[5]"]),
    (constant_image, "no_constant_images", ["1 of 240", "constant", "test[4]"]),
    (label_outside, "labels_in_range", ["outside 0..9", "values 10", "val[1]"]),
    (missing_class, "train_has_all_classes", ["class(es) 3 "]),
    (too_few_per_class, "min_per_class", ["fewer than 4", "class 5: 2"]),
    (leaked_to_test, "no_split_leakage", ["test[6] = train[0]"]),
    (empty_split, "splits_non_empty", ["val have no images", "val 0"]),
    (no_class_3_in_test, "every_split_has_all_classes", ["test lacks class(es) 3"]),
    (too_few_rows, "row_count", ["only 240 images", "at least 1000"]),
]


@pytest.mark.parametrize("corrupt, name, facts", CORRUPTIONS,
                         ids=[c[0].__name__ for c in CORRUPTIONS])
def test_corruption_fails_its_check(corrupt, name, facts):
    splits = make_splits()
    kw = {**KW, **(corrupt(splits) or {})}
    report = validate_splits(splits, **kw)
    assert not report.success
    failed = check(report, name)
    assert not failed.success, report.summary()
    for fact in facts:
        assert fact in failed.message, failed.message
    assert "Fix:" in failed.message
    assert "\n" not in failed.message
    # One corruption should not drag unrelated checks down with it.
    assert {c.name for c in report.failures()} == {name}, report.summary()


def test_duplicates_within_a_split_or_between_val_and_test_are_allowed():
    splits = make_splits()
    splits["train"][0][1] = splits["train"][0][0]  # within train
    splits["test"][0][0] = splits["val"][0][0]     # val <-> test: no leak into training
    report = validate_splits(splits, **KW)
    assert check(report, "no_split_leakage").success, report.summary()


def test_report_summary_and_json():
    splits = make_splits()
    leaked_to_test(splits)
    label_outside(splits)
    report = validate_splits(splits, **KW)
    failed = {c.name for c in report.failures()}
    assert failed == {"labels_in_range", "no_split_leakage"}
    summary = report.summary()
    assert f"{len(failed)} of {len(CHECK_NAMES)} checks FAILED" in summary
    assert all(name in summary for name in failed)
    assert "pixels_in_range" not in summary  # passing checks are not listed
    data = json.loads(json.dumps(report.to_dict()))
    assert data["success"] is False
    assert [c["name"] for c in data["checks"]] == CHECK_NAMES
    assert set(data["checks"][0]) == {"name", "success", "message"}


def test_gx_error_becomes_failed_check(monkeypatch):
    """If GX raises while evaluating one expectation, that check fails with the reason."""
    import slimline.data.validate as validate

    table = validate._image_table
    monkeypatch.setattr(validate, "_image_table",
                        lambda splits: table(splits).drop(columns=["pix_range"]))
    report = validate.validate_splits(make_splits(), **KW)
    broken = check(report, "no_constant_images")
    assert not broken.success
    assert "could not evaluate" in broken.message and "pix_range" in broken.message
    assert check(report, "pixels_finite").success  # the rest still ran


def test_report_without_gx():
    report = ValidationReport([Check("a", True, "ok"), Check("b", False, "bad. Fix: x")])
    assert not report.success
    assert report.failures() == [report.checks[1]]
    assert report.summary().splitlines()[1] == "  - b: bad. Fix: x"


def test_import_is_cheap():
    """Other stages import slimline.data.validate; GX (seconds to import) must stay lazy."""
    code = "import sys, slimline.data.validate; assert 'great_expectations' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
