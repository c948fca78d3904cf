"""What every raw dataset reader returns and raises. Its own module so that the dispatcher
(slimline.data.sources) and the readers it dispatches to (slimline.data.imagefolder) both
import it, and not each other."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from slimline.errors import StageError


class DataError(StageError):
    """Bad input data. str(e) is one readable message naming the file, what is wrong, and the fix."""


@dataclass
class RawDataset:
    x: np.ndarray              # (N, C, H, W), numeric dtype as read
    y: np.ndarray              # (N,) int64
    x_test: np.ndarray | None  # predefined test split if the source has one, else None
    y_test: np.ndarray | None
    source: str                # "mnist5k" | "idx" | "npz" | "imagefolder"
    files: list[str]           # files read (for the report)
    x_val: np.ndarray | None = None  # predefined validation split (image folders with val/)
    y_val: np.ndarray | None = None
