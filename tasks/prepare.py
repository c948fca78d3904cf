"""Stage `prepare`: load the source, split it, validate it, write data/prepared.

    python -m tasks.prepare [--params params.yaml] [--out data/prepared]

Validation (Great Expectations) runs on the split in memory, before anything is
written: a failed check exits non-zero and leaves the previous output untouched.
"""
from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np

from slimline.data.dataset import Prepared, save_prepared
from slimline.params import DataParams, Params
from slimline.errors import StageError
from slimline.stage import main, markdown_table, write_report


def stratified_take(y: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Indices of a per-class random `fraction` of y (at least one per class)."""
    picked = []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        picked.append(idx[: max(1, int(round(len(idx) * fraction)))])
    return np.sort(np.concatenate(picked))


def split_indices(y: np.ndarray, fractions: dict[str, float], seed: int) -> dict[str, np.ndarray]:
    """Stratified, seeded split of range(len(y)); the remainder goes to `train`."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list] = {name: [] for name in [*fractions, "train"]}
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        start = 0
        for name, frac in fractions.items():
            k = int(round(len(idx) * frac))
            parts[name].append(idx[start:start + k])
            start += k
        parts["train"].append(idx[start:])
    return {name: np.sort(np.concatenate(p)) for name, p in parts.items()}


def image_hashes(x: np.ndarray) -> list[str]:
    flat = np.ascontiguousarray(x).reshape(len(x), -1)
    return [hashlib.sha1(row.tobytes()).hexdigest() for row in flat]


def drop_duplicates(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Keep the first of exact-duplicate images, so a random split cannot create
    train/test leakage by itself. (Leakage in a source's own test split is
    still caught by validation.)"""
    _, first = np.unique(np.array(image_hashes(x)), return_index=True)
    keep = np.sort(first)
    return x[keep], y[keep], len(x) - len(keep)


def build_splits(cfg: DataParams):
    from slimline.data.sources import load_source

    raw = load_source(cfg.source, cfg.path)
    rng = np.random.default_rng(cfg.seed)
    x, y = raw.x, raw.y.astype(np.int64)
    x, y, dropped = drop_duplicates(x, y)
    has_test = raw.x_test is not None
    if cfg.limit is not None:
        pool_share = 1.0 - (cfg.test_fraction if has_test else 0.0)
        keep = stratified_take(y, min(1.0, cfg.limit * pool_share / len(y)), rng)
        x, y = x[keep], y[keep]
    if has_test:
        xt, yt = raw.x_test, raw.y_test.astype(np.int64)
        if cfg.limit is not None:
            keep = stratified_take(yt, min(1.0, cfg.limit * cfg.test_fraction / len(yt)), rng)
            xt, yt = xt[keep], yt[keep]
        idx = split_indices(y, {"val": cfg.val_fraction}, cfg.seed)
        splits = {"train": (x[idx["train"]], y[idx["train"]]),
                  "val": (x[idx["val"]], y[idx["val"]]), "test": (xt, yt)}
    else:
        idx = split_indices(y, {"test": cfg.test_fraction, "val": cfg.val_fraction}, cfg.seed)
        splits = {name: (x[idx[name]], y[idx[name]]) for name in ("train", "val", "test")}
    splits = {k: (v[0].astype(np.float32) if v[0].dtype.kind == "f" else v[0], v[1])
              for k, v in splits.items()}
    return raw, splits, dropped


def prepare(params: Params, args: argparse.Namespace) -> None:
    cfg = params.data
    raw, splits, dropped = build_splits(cfg)
    all_y = np.concatenate([y for _, y in splits.values()])
    num_classes = cfg.num_classes or int(all_y.max()) + 1

    from slimline.data.validate import validate_splits

    report = validate_splits(splits, num_classes=num_classes, min_per_class=cfg.min_per_class,
                             pixel_min=0.0, pixel_max=cfg.pixel_max,
                             min_rows=num_classes * cfg.min_per_class)
    print(report.summary(), flush=True)
    if not report.success:
        raise StageError(f"data validation failed; {args.out} was not changed.\n{report.summary()}")

    x_train = splits["train"][0].astype(np.float64)
    axes = (0, 2, 3)  # per channel, over train only: val/test must not leak into the stats
    mean, std = x_train.mean(axis=axes), x_train.std(axis=axes)
    counts = {name: {str(c): int((y == c).sum()) for c in range(num_classes)}
              for name, (_, y) in splits.items()}
    # File names only: absolute paths (a venv, a checkout) would make identical data hash differently.
    meta = {"source": cfg.source, "files": [Path(f).name for f in raw.files], "input_shape": list(splits["train"][0].shape[1:]),
            "num_classes": num_classes, "mean": [float(m) for m in mean],
            "std": [float(max(s, 1e-6)) for s in std], "counts": counts,
            "sizes": {k: len(v[1]) for k, v in splits.items()}, "duplicates_dropped": dropped}
    save_prepared(Prepared(splits=splits, meta=meta), args.out)

    rows = [{"split": k, "images": len(v[1]), **{f"class {c}": counts[k][str(c)]
                                                 for c in range(num_classes)}}
            for k, v in splits.items()]
    checks = [{"check": c.name, "passed": c.success, "detail": c.message} for c in report.checks]
    md = (f"## prepare\n\nSource `{cfg.source}` ({', '.join(raw.files) or 'packaged'}), "
          f"input {meta['input_shape']}, {num_classes} classes, {dropped} exact duplicates "
          f"dropped.\n\nTrain mean {meta['mean']}, std {meta['std']} (raw pixel units).\n\n"
          f"{markdown_table(rows)}\n\n### Validation (Great Expectations)\n\n"
          f"{markdown_table(checks)}\n")
    write_report("prepare", {**{k: meta[k] for k in ("source", "input_shape", "num_classes",
                                                      "mean", "std", "sizes", "counts",
                                                      "duplicates_dropped")},
                             "validation": report.to_dict()}, md)
    print(f"prepare: wrote {args.out} ({meta['sizes']})", flush=True)


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="data/prepared", type=Path, help="output folder")


if __name__ == "__main__":
    main("prepare", prepare, _args)
