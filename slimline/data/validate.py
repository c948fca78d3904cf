"""Data validation of the prepared splits with Great Expectations (GX Core 1.x).

`validate_splits` turns the image arrays into one pandas table with a row per
image (split, index within the split, label and per-image pixel statistics,
whether its exact bytes are also in train, ...) and runs ONE expectation suite
over it. The arrays may be memory maps larger than RAM: pixels are read a chunk
at a time, and duplicates are found by hashing each image once.  Each property
we care about becomes a named `Check` whose message says what is wrong, how
often, where (``train[12]``) and how to fix it, so a failed `prepare` stage can
be acted on from its log alone.

great_expectations takes seconds to import (pandas a fraction of one), so both
are imported inside the functions that need them; importing this module is cheap.
"""
from __future__ import annotations

import hashlib
import logging
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

if TYPE_CHECKING:  # pandas is imported lazily too: it is most of this module's import time
    import pandas as pd

_EXAMPLES = 5  # how many split[index] examples a message quotes
_CHUNK_BYTES = 64 << 20  # pixels per numpy chunk: bounds the copies made for big splits and images


@dataclass
class Check:
    """One expectation's outcome."""

    name: str
    success: bool
    message: str


@dataclass
class ValidationReport:
    checks: list[Check]

    @property
    def success(self) -> bool:
        return all(c.success for c in self.checks)

    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.success]

    def summary(self) -> str:
        failed = self.failures()
        if not failed:
            return f"data validation: all {len(self.checks)} checks passed"
        lines = [f"data validation: {len(failed)} of {len(self.checks)} checks FAILED"]
        lines += [f"  - {c.name}: {c.message}" for c in failed]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"success": self.success, "checks": [asdict(c) for c in self.checks]}


# --------------------------------------------------------------------------- table

def _pixel_stats(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-image (min, max) over finite pixels and the count of NaN/inf pixels.

    Min/max ignore non-finite pixels so that "NaN/inf" and "out of range" are
    reported by separate checks; an image with no finite pixel gets NaN, which
    GX counts as missing rather than out of range. Integer pixels keep their dtype
    (a byte each for uint8, where float64 would take eight: the table has a row per image).
    """
    n, size = flat.shape
    floating = np.issubdtype(flat.dtype, np.floating) or size == 0
    if floating:
        lo, hi = np.full(n, np.nan), np.full(n, np.nan)
    else:
        lo, hi = np.empty(n, flat.dtype), np.empty(n, flat.dtype)
    bad = np.zeros(n, dtype=np.int32)
    if size == 0:
        return lo, hi, bad
    chunk = max(1, _CHUNK_BYTES // (size * flat.dtype.itemsize))
    for start in range(0, n, chunk):
        part = np.asarray(flat[start:start + chunk])
        if floating:
            finite = np.isfinite(part)
            bad[start:start + len(part)] = size - finite.sum(axis=1)
            part_lo = np.where(finite, part, np.inf).min(axis=1).astype(np.float64)
            part_hi = np.where(finite, part, -np.inf).max(axis=1).astype(np.float64)
            none = ~finite.any(axis=1)
            part_lo[none], part_hi[none] = np.nan, np.nan
        else:  # integer/bool pixels are always finite
            part_lo, part_hi = part.min(axis=1), part.max(axis=1)
        lo[start:start + len(part)] = part_lo
        hi[start:start + len(part)] = part_hi
    return lo, hi, bad


def _image_table(splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> pd.DataFrame:
    """One row per image with everything the expectations look at."""
    import pandas as pd

    columns: dict[str, list[np.ndarray]] = {c: [] for c in (
        "split", "index", "label", "pix_min", "pix_max", "pix_range", "nonfinite_count")}
    hashes = []  # SHA-1 of each image's bytes: 20 bytes a row, kept out of the table
    for name, (x, y) in splits.items():
        x, y = np.asarray(x), np.asarray(y).reshape(-1)  # a memory map stays one: read below in chunks
        if x.ndim < 1 or len(x) != len(y):
            raise ValueError(f"split '{name}': x has shape {x.shape} but y has {len(y)} labels; "
                             f"expected x (N, C, H, W) and y (N,)")
        n = len(x)
        flat = np.ascontiguousarray(x.reshape(n, int(np.prod(x.shape[1:], dtype=np.int64))))
        lo, hi, bad = _pixel_stats(flat)
        for column, values in (("split", np.full(n, name, dtype=object)),
                               ("index", np.arange(n, dtype=np.int32)), ("label", y), ("pix_min", lo),
                               ("pix_max", hi),  # 0 range <=> constant image; exact, unlike a float std
                               ("pix_range", hi - lo if lo.dtype.kind == "f" else
                                np.subtract(hi, lo, dtype=np.int64 if lo.itemsize >= 4 else np.int32)),
                               ("nonfinite_count", bad)):
            columns[column].append(values)
        digests = np.empty(n, dtype="S20")
        digests[:] = [hashlib.sha1(row).digest() for row in flat]
        hashes.append(digests)
    df = pd.DataFrame({c: (np.concatenate(v) if v else np.zeros(0, object if c == "split" else float))
                       for c, v in columns.items()})

    # Leakage: the same bytes in train and in another split. Duplicates inside one split (or
    # between val and test) do not leak test data into training. Both sides of a leak are
    # flagged; first_train_index names the train image a val/test image copies (-1: none).
    hashes = np.concatenate(hashes) if hashes else np.zeros(0, "S20")
    is_train = (df["split"] == "train").to_numpy()
    train_hashes, train_index = hashes[is_train], df["index"].to_numpy()[is_train]
    order = np.argsort(train_hashes, kind="stable")  # stable: equal hashes keep the first train index first
    sorted_hashes = train_hashes[order]
    at = np.minimum(np.searchsorted(sorted_hashes, hashes), max(len(sorted_hashes) - 1, 0))
    in_train = (sorted_hashes[at] == hashes) if len(sorted_hashes) else np.zeros(len(hashes), bool)
    df["leaks_with_train"] = in_train & np.isin(hashes, hashes[~is_train])
    first = np.where(in_train, train_index[order][at] if len(order) else -1, -1)
    df["first_train_index"] = first.astype(np.int32)
    # Size of this image's class within train; only train rows are checked.
    train_counts = df.loc[is_train, "label"].value_counts()
    df["train_class_count"] = np.where(is_train, df["label"].map(train_counts), np.nan).astype(np.float32)
    return df


# --------------------------------------------------------------------------- checks
# One registry: each check is its GX expectations plus the message that explains its
# outcome. The report lists the checks in registration order.

@dataclass
class Outcome:
    """What a check's message reads: the image table, the validation params and the GX
    results of the check's expectations."""

    df: pd.DataFrame
    p: dict
    results: list[dict]

    @property
    def n(self) -> int:
        return len(self.df)

    @property
    def sizes(self) -> str:
        return ", ".join(f"{s} {int((self.df['split'] == s).sum())}" for s in self.p["splits"])

    @property
    def rows(self) -> list[dict]:
        """Unexpected rows over the check's expectations, each image once, train first."""
        seen, rows = set(), []
        for r in self.results:
            for row in r["result"].get("unexpected_index_list") or []:
                key = (row["split"], int(row["index"]))
                if key not in seen:
                    seen.add(key)
                    rows.append(row)
        rows.sort(key=lambda row: (row["split"] != "train", row["split"], int(row["index"])))
        return rows

    @property
    def where(self) -> str:
        """'train[12], test[4], ...' for the first unexpected rows."""
        rows = self.rows
        shown = [f"{r['split']}[{int(r['index'])}]" for r in rows[:_EXAMPLES]]
        return ", ".join(shown) + (", ..." if len(rows) > len(shown) else "")

    def missing(self) -> list | None:
        return self.results[0]["result"].get("partial_missing_list")


@dataclass(frozen=True)
class CheckDef:
    name: str
    expect: Callable[[Any, dict], list]  # (gx expectations module, params) -> expectations
    explain: Callable[[bool, Outcome], str]  # (passed, outcome) -> message


CHECKS: dict[str, CheckDef] = {}


def check(name: str, expect: Callable[[Any, dict], list]):
    """Register the decorated message function, with its expectations, as check `name`."""
    def register(explain: Callable[[bool, Outcome], str]):
        CHECKS[name] = CheckDef(name, expect, explain)
        return explain
    return register


def _rows_of(split: str):
    """GX row condition: only the rows of one split."""
    from great_expectations.expectations.row_conditions import Column

    return Column("split") == split


def _fmt(v: float) -> str:
    return f"{v:g}"


@check("row_count", lambda gxe, p: [gxe.ExpectTableRowCountToBeBetween(min_value=p["min_rows"])])
def _row_count(ok: bool, o: Outcome) -> str:
    if ok:
        return f"{o.n} images ({o.sizes}); at least {o.p['min_rows']} required"
    return (f"only {o.n} images in total ({o.sizes}); at least {o.p['min_rows']} are required. "
            f"Fix: check the source data and data.limit, or lower data.min_per_class.")


@check("splits_non_empty", lambda gxe, p: [
    gxe.ExpectColumnDistinctValuesToContainSet(column="split", value_set=p["splits"])])
def _splits_non_empty(ok: bool, o: Outcome) -> str:
    if ok:
        return f"every split has images ({o.sizes})"
    return (f"split(s) {', '.join(map(str, o.missing() or []))} have no images ({o.sizes}). "
            f"Fix: check data.val_fraction / data.test_fraction and the source's test files.")


@check("labels_in_range", lambda gxe, p: [
    gxe.ExpectColumnValuesToBeInSet(column="label", value_set=list(range(p["num_classes"])))])
def _labels_in_range(ok: bool, o: Outcome) -> str:
    k = o.p["num_classes"]
    if ok:
        return f"all {o.n} labels are in 0..{k - 1}"
    values = sorted({int(r["label"]) if float(r["label"]).is_integer() else float(r["label"])
                     for r in o.rows})
    return (f"{len(o.rows)} of {o.n} images have labels outside 0..{k - 1} "
            f"(values {', '.join(map(str, values[:_EXAMPLES]))}; {o.where}). "
            f"Fix: remap the labels to 0..{k - 1} or set data.num_classes.")


@check("train_has_all_classes", lambda gxe, p: [gxe.ExpectColumnDistinctValuesToContainSet(
    column="label", value_set=list(range(p["num_classes"])), row_condition=_rows_of("train"))])
def _train_has_all_classes(ok: bool, o: Outcome) -> str:
    k = o.p["num_classes"]
    if ok:
        return f"all {k} classes occur in train"
    missing = o.missing()
    if missing is None:  # e.g. no train split at all: every class is missing
        missing = list(range(k))
    return (f"class(es) {', '.join(map(str, sorted(missing)))} have no train images. "
            f"Fix: split stratified by class, add data for them, or set data.num_classes.")


def _others_have_all_classes(gxe, p) -> list:
    # Empty splits are splits_non_empty's to report; with none left the check holds vacuously.
    return [gxe.ExpectColumnDistinctValuesToContainSet(
        column="label", value_set=list(range(p["num_classes"])), row_condition=_rows_of(split))
        for split in p["nonempty"] if split != "train"] or [gxe.ExpectColumnToExist(column="label")]


@check("every_split_has_all_classes", _others_have_all_classes)
def _every_split_has_all_classes(ok: bool, o: Outcome) -> str:
    others = [s for s in o.p["nonempty"] if s != "train"]
    if ok:
        return f"every class occurs in {' and '.join(others)}"
    present = o.df.groupby("split")["label"].unique()
    gaps = [f"{s} lacks class(es) "
            f"{', '.join(map(str, sorted(set(range(o.p['num_classes'])) - set(present.get(s, [])))))}"
            for s in others if set(range(o.p["num_classes"])) - set(present.get(s, []))]
    return (f"{'; '.join(gaps)}: accuracy on that split would say nothing about those classes. "
            f"Fix: add images of those classes to the split, or split stratified by class.")


@check("min_per_class", lambda gxe, p: [gxe.ExpectColumnValuesToBeBetween(
    column="train_class_count", min_value=p["min_per_class"], row_condition=_rows_of("train"))])
def _min_per_class(ok: bool, o: Outcome) -> str:
    train_counts = o.df.loc[o.df["split"] == "train", "label"].value_counts()
    if ok:
        least = int(train_counts.min()) if len(train_counts) else 0
        return f"every train class has >= {o.p['min_per_class']} images (smallest: {least})"
    short = sorted({int(r["label"]) for r in o.rows})
    detail = ", ".join(f"class {c}: {int(train_counts.get(c, 0))}" for c in short[:_EXAMPLES])
    return (f"{len(short)} class(es) have fewer than {o.p['min_per_class']} train images "
            f"({detail}{', ...' if len(short) > _EXAMPLES else ''}). "
            f"Fix: add data for these classes or lower data.min_per_class.")


@check("pixels_finite", lambda gxe, p: [
    gxe.ExpectColumnValuesToBeBetween(column="nonfinite_count", max_value=0)])
def _pixels_finite(ok: bool, o: Outcome) -> str:
    if ok:
        return f"no NaN/inf pixels in {o.n} images"
    pixels = int(o.df["nonfinite_count"].sum())
    return (f"{len(o.rows)} of {o.n} images contain NaN/inf pixels ({pixels} pixels; {o.where}). "
            f"Fix: drop or repair these images in the source data.")


@check("pixels_in_range", lambda gxe, p: [
    gxe.ExpectColumnValuesToBeBetween(column="pix_min", min_value=p["pixel_min"]),
    gxe.ExpectColumnValuesToBeBetween(column="pix_max", max_value=p["pixel_max"])])
def _pixels_in_range(ok: bool, o: Outcome) -> str:
    lo, hi = _fmt(o.p["pixel_min"]), _fmt(o.p["pixel_max"])
    if ok:
        return f"all pixels are within [{lo}, {hi}]"
    observed = f"observed min {_fmt(o.df['pix_min'].min())}, max {_fmt(o.df['pix_max'].max())}"
    return (f"{len(o.rows)} of {o.n} images have pixels outside [{lo}, {hi}] ({observed}; "
            f"{o.where}). Fix: rescale the data or set data.pixel_max.")


@check("no_constant_images", lambda gxe, p: [
    gxe.ExpectColumnValuesToBeBetween(column="pix_range", min_value=0, strict_min=True)])
def _no_constant_images(ok: bool, o: Outcome) -> str:
    if ok:
        return f"no constant (blank) images among {o.n}"
    return (f"{len(o.rows)} of {o.n} images are constant, every pixel the same value ({o.where}). "
            f"Fix: drop blank or corrupt images from the source data.")


@check("no_split_leakage", lambda gxe, p: [
    gxe.ExpectColumnValuesToBeInSet(column="leaks_with_train", value_set=[False])])
def _no_split_leakage(ok: bool, o: Outcome) -> str:
    if ok:
        return "no image in train also appears in another split"
    df = o.df
    leaked = [r for r in o.rows if r["split"] != "train"]
    copies = df.set_index(["split", "index"])["first_train_index"]
    pairs = [f"{r['split']}[{int(r['index'])}] = train[{int(copies[(r['split'], int(r['index']))])}]"
             for r in leaked[:_EXAMPLES]]
    return (f"{len(leaked)} val/test images are exact copies of train images "
            f"({', '.join(pairs)}{', ...' if len(leaked) > _EXAMPLES else ''}). "
            f"Fix: drop exact duplicates before splitting.")


CHECK_NAMES = list(CHECKS)


# --------------------------------------------------------------------------- suite

@contextmanager
def _quiet_gx():
    """Keep GX's chatter out of the stage logs while the suite runs.

    Several GX modules pin their own loggers to INFO (e.g. "Created temporary
    directory ... for ephemeral docs site"), so raising the parent's level is
    not enough: stop propagation at the package logger instead.  Real failures
    are not lost: GX records them in the results, which become check messages.
    """
    gx_logger = logging.getLogger("great_expectations")
    propagate = gx_logger.propagate
    gx_logger.propagate = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # deprecation chatter from GX and its dependencies
            yield
    finally:
        gx_logger.propagate = propagate


def _run_suite(df: pd.DataFrame, params: dict) -> dict[str, list[dict]]:
    """Run the suite once; return, per check name, a list of plain result dicts
    ({"success", "result", "error"}) for the expectations of that check."""
    with _quiet_gx():
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        context = gx.get_context(mode="ephemeral")
        # Otherwise every run draws "Calculating Metrics" tqdm bars on stderr.
        context.variables.progress_bars = ProgressBarsConfig(globally=False,
                                                             metric_calculations=False)
        batch = (context.data_sources.add_pandas("images")
                 .add_dataframe_asset("images")
                 .add_batch_definition_whole_dataframe("all"))
        suite = gx.ExpectationSuite(name="splits")
        import great_expectations.expectations as gxe

        for name, spec in CHECKS.items():
            for expectation in spec.expect(gxe, params):
                # GX does not return results in suite order, so tag each with its check.
                expectation.meta = {"check": name}
                suite.add_expectation(expectation)
        suite = context.suites.add(suite)
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name="splits", data=batch, suite=suite))
        result = definition.run(
            batch_parameters={"dataframe": df},
            result_format={"result_format": "COMPLETE",
                           "unexpected_index_column_names": ["split", "index", "label"]})

    by_check: dict[str, list[dict]] = {}
    for r in result.results:
        name = (r.expectation_config.meta or {}).get("check", "?")
        by_check.setdefault(name, []).append(
            {"success": bool(r.success), "result": r.result or {},
             "error": _exception_message(r.exception_info)})
    return by_check


def _exception_message(info: Any) -> str | None:
    """GX reports exceptions either flat ({"raised_exception": ...}) or keyed by metric."""
    if not info:
        return None
    infos = [info] if "raised_exception" in info else list(info.values())
    for i in infos:
        if isinstance(i, dict) and i.get("raised_exception"):
            return str(i.get("exception_message") or "unknown error").splitlines()[0]
    return None


# --------------------------------------------------------------------------- entry point

def validate_splits(splits: dict[str, tuple[np.ndarray, np.ndarray]], *, num_classes: int,
                    min_per_class: int, pixel_min: float, pixel_max: float,
                    min_rows: int) -> ValidationReport:
    """Validate train/val/test arrays with one GX suite; never raises for bad *data*.

    Raises ValueError only when the arrays are not image/label pairs at all
    (len(x) != len(y)), since no per-image table can be built then.
    """
    df = _image_table(splits)
    params = dict(splits=list(splits), nonempty=[k for k, (_, y) in splits.items() if len(y)],
                  num_classes=int(num_classes),
                  min_per_class=int(min_per_class), pixel_min=float(pixel_min),
                  pixel_max=float(pixel_max), min_rows=int(min_rows))
    try:
        by_check = _run_suite(df, params)
    except Exception as e:  # noqa: BLE001 - a broken GX run must still yield a report
        reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        return ValidationReport([Check(name, False, f"GX validation did not run ({reason}).")
                                 for name in CHECK_NAMES])

    checks = []
    for name in CHECK_NAMES:
        results = by_check.get(name)
        if not results:
            checks.append(Check(name, False, "GX returned no result for this check."))
            continue
        errors = [r["error"] for r in results if r["error"]]
        if errors:
            checks.append(Check(name, False, f"GX could not evaluate this check ({errors[0]}). "
                                             f"Fix: inspect the data for this property."))
            continue
        ok = all(r["success"] for r in results)
        try:
            message = CHECKS[name].explain(ok, Outcome(df, params, results))
        except Exception as e:  # noqa: BLE001 - a message bug must not hide the verdict
            message = f"{'passed' if ok else 'failed'} (message unavailable: {e})"
        checks.append(Check(name, ok, message))
    return ValidationReport(checks)
