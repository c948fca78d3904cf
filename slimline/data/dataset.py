"""The prepared dataset on disk: one safetensors file per split plus meta.json.

safetensors (not .npz) because numpy's zip writer stamps the current time into
the archive, which would change the DVC hash of identical data on every run.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from slimline.io import atomic_dir, write_json

SPLITS = ("train", "val", "test")


@dataclass
class Prepared:
    splits: dict[str, tuple[np.ndarray, np.ndarray]]  # name -> (x (N,C,H,W), y (N,))
    meta: dict  # input_shape, num_classes, mean, std, counts, ...

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.meta["input_shape"])

    @property
    def num_classes(self) -> int:
        return int(self.meta["num_classes"])


def save_prepared(prep: Prepared, out_dir: str | Path) -> None:
    with atomic_dir(out_dir) as tmp:
        for name, (x, y) in prep.splits.items():
            save_file({"x": np.ascontiguousarray(x), "y": np.ascontiguousarray(y, dtype=np.int64)},
                      str(tmp / f"{name}.safetensors"))
        write_json(tmp / "meta.json", prep.meta)


def load_prepared(folder: str | Path = "data/prepared") -> Prepared:
    folder = Path(folder)
    meta_path = folder / "meta.json"
    if not meta_path.exists():
        raise FileNotFoundError(
            f"{folder} has no prepared dataset: run the `prepare` stage first "
            f"(`dvc repro prepare` or `python -m tasks.prepare`)")
    splits = {}
    for name in SPLITS:
        arrays = load_file(str(folder / f"{name}.safetensors"))
        splits[name] = (arrays["x"], arrays["y"])
    return Prepared(splits=splits, meta=json.loads(meta_path.read_text()))
