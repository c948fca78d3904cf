"""The prepared dataset on disk: one safetensors file per split plus meta.json.

safetensors (not .npz) because numpy's zip writer stamps the current time into
the archive, which would change the DVC hash of identical data on every run.
Splits are read memory-mapped (slimline.data.splitfile): a process holds only the
batches it indexes, whatever the dataset's size.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Union

import numpy as np

from slimline.data.splitfile import SplitWriter, open_split
from slimline.io import atomic_dir, write_json

SPLITS = ("train", "val", "test")


class Split:
    """One split of a prepared folder: x (N, C, H, W) and y (N,) as read-only memory maps,
    opened on first use. It unpacks like the (x, y) pair it stands for, and pickles as
    its path, so a DataLoader worker maps the file itself instead of receiving pixels."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._arrays: tuple[np.ndarray, np.ndarray] | None = None

    def _open(self) -> tuple[np.ndarray, np.ndarray]:
        if self._arrays is None:
            self._arrays = open_split(self.path)
        return self._arrays

    @property
    def x(self) -> np.ndarray:
        return self._open()[0]

    @property
    def y(self) -> np.ndarray:
        return self._open()[1]

    def __len__(self) -> int:
        return len(self.y)

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter(self._open())

    def __getitem__(self, i: int) -> np.ndarray:
        return self._open()[i]

    def __getstate__(self) -> dict:
        return {"path": self.path}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"])


SplitData = Union[Split, tuple[np.ndarray, np.ndarray]]  # on disk, or arrays in memory (tests, ablations)


@dataclass
class Prepared:
    splits: dict[str, SplitData]  # name -> (x (N,C,H,W), y (N,))
    meta: dict  # input_shape, num_classes, mean, std, counts, ...

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.meta["input_shape"])

    @property
    def num_classes(self) -> int:
        return int(self.meta["num_classes"])


def write_split(path: str | Path, x: np.ndarray, y: np.ndarray, rows: np.ndarray | None = None,
                chunk: int = 1024, dtype=None) -> None:
    """Write x[rows], y[rows] (all rows when None) to `path`, `chunk` images at a time:
    x may be a memory map larger than RAM. The bytes do not depend on `chunk`."""
    rows = np.arange(len(y)) if rows is None else np.asarray(rows)
    dtype = np.dtype(dtype or x.dtype)
    with SplitWriter(path, len(rows), x.shape[1:], dtype) as w:
        for i in range(0, len(rows), chunk):
            part = rows[i:i + chunk]
            w.write(np.asarray(x[part], dtype=dtype), np.asarray(y[part], dtype=np.int64))


def save_prepared(prep: Prepared, out_dir: str | Path) -> None:
    with atomic_dir(out_dir) as tmp:
        for name, (x, y) in prep.splits.items():
            write_split(tmp / f"{name}.safetensors", x, y)
        write_json(tmp / "meta.json", prep.meta)


def load_prepared(folder: str | Path = "data/prepared") -> Prepared:
    folder = Path(folder)
    meta_path = folder / "meta.json"
    if not meta_path.exists():
        raise FileNotFoundError(
            f"{folder} has no prepared dataset: run the `prepare` stage first "
            f"(`dvc repro prepare` or `python -m tasks.prepare`)")
    splits = {name: Split(folder / f"{name}.safetensors") for name in SPLITS}
    for split in splits.values():
        split._open()  # a missing or damaged file is refused now, not in mid-epoch
    return Prepared(splits=splits, meta=json.loads(meta_path.read_text()))
