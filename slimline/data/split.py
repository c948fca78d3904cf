"""Split a loaded source into train/val/test: stratified, seeded, without duplicates."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from slimline.data.dataset import write_split
from slimline.params import DataParams


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


HASH_CHUNK = 1024  # images hashed per read: a memory-mapped source is read a chunk at a time


def image_hashes(x: np.ndarray) -> np.ndarray:
    """The SHA-1 of each image's bytes, as 20-byte strings (a million take 20 MB)."""
    hashes = np.empty(len(x), dtype="S20")
    for i in range(0, len(x), HASH_CHUNK):
        flat = np.ascontiguousarray(x[i:i + HASH_CHUNK]).reshape(-1, int(np.prod(x.shape[1:])))
        hashes[i:i + len(flat)] = [hashlib.sha1(row).digest() for row in flat]
    return hashes


def unique_rows(x: np.ndarray) -> np.ndarray:
    """The rows of x to keep: the first of each set of exact-duplicate images, so a random
    split cannot create train/test leakage by itself. (Leakage in a source's own test split
    is still caught by validation.)"""
    _, first = np.unique(image_hashes(x), return_index=True)
    return np.sort(first)


@dataclass
class SplitPlan:
    """A split still to be written: rows `rows` of the source's x and y, in that order.
    Nothing is copied until the writer reads it a chunk at a time."""

    x: np.ndarray  # the source's images (an array, or a memory map of decoded images)
    y: np.ndarray  # the source's labels, int64
    rows: np.ndarray

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.float32) if self.x.dtype.kind == "f" else self.x.dtype


CHUNK_BYTES = 16 << 20  # pixels read and written at a time, unless a chunk of images is given


def write_plans(plans: dict[str, SplitPlan], folder: Path, chunk: int | None = None) -> None:
    """Write each plan to folder/<split>.safetensors, `chunk` images at a time (None: 16 MiB
    of pixels). The bytes do not depend on the chunk."""
    for name, plan in plans.items():
        image_bytes = int(np.prod(plan.x.shape[1:])) * plan.dtype.itemsize
        write_split(folder / f"{name}.safetensors", plan.x, plan.y, plan.rows,
                    chunk=chunk or max(1, CHUNK_BYTES // image_bytes), dtype=plan.dtype)


def build_splits(cfg: DataParams, scratch: Path | None = None):
    """(raw dataset, {split: SplitPlan}, exact duplicates dropped, the source's meta).
    scratch: a folder for the decoded images of sources that are not arrays already."""
    from slimline.data.sources import load_source

    raw, source_meta = load_source(cfg.source, cfg.path, cfg.image_size, cfg.channels, scratch)
    rng = np.random.default_rng(cfg.seed)
    y = raw.y.astype(np.int64)
    pool = unique_rows(raw.x)
    dropped = len(y) - len(pool)
    has_test, has_val = raw.x_test is not None, raw.x_val is not None
    if cfg.limit is not None:
        pool_share = 1.0 - (cfg.test_fraction if has_test else 0.0) - (cfg.val_fraction if has_val else 0.0)
        pool = pool[stratified_take(y[pool], min(1.0, cfg.limit * pool_share / len(pool)), rng)]

    def given(xs, ys, fraction):  # a split the source defines, capped like the rest under `limit`
        ys = ys.astype(np.int64)
        rows = np.arange(len(ys))
        if cfg.limit is not None:
            rows = stratified_take(ys, min(1.0, cfg.limit * fraction / len(ys)), rng)
        return SplitPlan(xs, ys, rows)

    if has_test:
        test = given(raw.x_test, raw.y_test, cfg.test_fraction)
    if has_val:
        val = given(raw.x_val, raw.y_val, cfg.val_fraction)
    carve = {"test": cfg.test_fraction} if not has_test else {}
    if not has_val:
        carve["val"] = cfg.val_fraction
    idx = split_indices(y[pool], carve, cfg.seed)
    plans = {name: SplitPlan(raw.x, y, pool[idx[name]]) for name in idx}
    if has_test:
        plans["test"] = test
    if has_val:
        plans["val"] = val
    return raw, {name: plans[name] for name in ("train", "val", "test")}, dropped, source_meta


STATS_CHUNK = 1024  # images per chunk of the normalisation statistics (any size gives the same bits)


def normalization(cfg: DataParams, x_train: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel (mean, std) in raw pixel units for the model's first layer: the train
    split's (val/test must not leak into them), or data.normalize's for imported weights,
    (x * scale - mean) / std rewritten as (x - mean / scale) / (std / scale)."""
    channels = x_train.shape[1]
    n = cfg.normalize
    if n is None:
        # In chunks: never a float64 copy of the split (8x its bytes).
        from slimline.data.stats import float_mean_std, mean_std

        if x_train.dtype == np.uint8:
            starts = range(0, len(x_train), STATS_CHUNK)
            mean, std = mean_std(lambda: (x_train[i:i + STATS_CHUNK] for i in starts), len(x_train))
        else:  # a float source (npz)
            mean, std = float_mean_std(x_train)
        return [float(m) for m in mean], [float(max(s, 1e-6)) for s in std]
    if len(n.mean) not in (1, channels):
        from slimline.data.raw import DataError

        raise DataError(f"data.normalize has {len(n.mean)} mean/std values but the images have "
                        f"{channels} channel(s): give one per channel, or one for all")
    mean, std = ((n.mean * channels if len(n.mean) == 1 else n.mean),
                 (n.std * channels if len(n.std) == 1 else n.std))
    return [m / n.scale for m in mean], [s / n.scale for s in std]
