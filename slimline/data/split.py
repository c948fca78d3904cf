"""Split a loaded source into train/val/test: stratified, seeded, without duplicates."""
from __future__ import annotations

import hashlib

import numpy as np

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
    """(raw dataset, {split: (x, y)}, exact duplicates dropped, the source's meta)."""
    from slimline.data.sources import load_source

    raw, source_meta = load_source(cfg.source, cfg.path, cfg.image_size, cfg.channels)
    rng = np.random.default_rng(cfg.seed)
    x, y = raw.x, raw.y.astype(np.int64)
    x, y, dropped = drop_duplicates(x, y)
    has_test, has_val = raw.x_test is not None, raw.x_val is not None
    if cfg.limit is not None:
        pool_share = 1.0 - (cfg.test_fraction if has_test else 0.0) - (cfg.val_fraction if has_val else 0.0)
        keep = stratified_take(y, min(1.0, cfg.limit * pool_share / len(y)), rng)
        x, y = x[keep], y[keep]

    def given(xs, ys, fraction):  # a split the source defines, capped like the rest under `limit`
        ys = ys.astype(np.int64)
        if cfg.limit is not None:
            keep = stratified_take(ys, min(1.0, cfg.limit * fraction / len(ys)), rng)
            xs, ys = xs[keep], ys[keep]
        return xs, ys

    if has_test:
        test = given(raw.x_test, raw.y_test, cfg.test_fraction)
    if has_val:
        val = given(raw.x_val, raw.y_val, cfg.val_fraction)
    if has_test or has_val:
        carve = {} if has_val else {"val": cfg.val_fraction}
        if not has_test:
            carve = {"test": cfg.test_fraction, **carve}
        idx = split_indices(y, carve, cfg.seed)
        splits = {"train": (x[idx["train"]], y[idx["train"]]),
                  "val": val if has_val else (x[idx["val"]], y[idx["val"]]),
                  "test": test if has_test else (x[idx["test"]], y[idx["test"]])}
    else:
        idx = split_indices(y, {"test": cfg.test_fraction, "val": cfg.val_fraction}, cfg.seed)
        splits = {name: (x[idx[name]], y[idx[name]]) for name in ("train", "val", "test")}
    splits = {k: (v[0].astype(np.float32) if v[0].dtype.kind == "f" else v[0], v[1])
              for k, v in splits.items()}
    return raw, splits, dropped, source_meta


STATS_CHUNK = 1024  # images per chunk of the normalisation statistics (any size gives the same bits)


def normalization(cfg: DataParams, x_train: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel (mean, std) in raw pixel units for the model's first layer: the train
    split's (val/test must not leak into them), or data.normalize's for imported weights,
    (x * scale - mean) / std rewritten as (x - mean / scale) / (std / scale)."""
    channels = x_train.shape[1]
    n = cfg.normalize
    if n is None:
        if x_train.dtype == np.uint8:  # in chunks: never a float64 copy of the split (8x its bytes)
            from slimline.data.stats import mean_std

            starts = range(0, len(x_train), STATS_CHUNK)
            mean, std = mean_std(lambda: (x_train[i:i + STATS_CHUNK] for i in starts), len(x_train))
        else:  # a float source (npz)
            x = x_train.astype(np.float64)
            mean, std = x.mean(axis=(0, 2, 3)), x.std(axis=(0, 2, 3))
        return [float(m) for m in mean], [float(max(s, 1e-6)) for s in std]
    if len(n.mean) not in (1, channels):
        from slimline.data.raw import DataError

        raise DataError(f"data.normalize has {len(n.mean)} mean/std values but the images have "
                        f"{channels} channel(s): give one per channel, or one for all")
    mean, std = ((n.mean * channels if len(n.mean) == 1 else n.mean),
                 (n.std * channels if len(n.std) == 1 else n.std))
    return [m / n.scale for m in mean], [s / n.scale for s in std]
