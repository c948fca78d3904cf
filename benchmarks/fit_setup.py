"""The data and model that the fit() benchmarks train (benchmarks/train_loop.py, and
benchmarks/numerics.py's child processes): one place, so both measure the same thing.
Both import `tasks` before this module, which imports torch: the CPU math pins must come first."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from slimline.data.dataset import load_prepared
from slimline.model import ModelSpec, build_model


def load_data(device):
    """The prepared split if `dvc repro prepare` has run, else the packaged digits directly."""
    if Path("data/prepared/meta.json").exists():
        prep = load_prepared("data/prepared")
        (x, y), (xv, yv) = prep.splits["train"], prep.splits["val"]
    else:
        from slimline.data.sources import load_mnist5k

        raw = load_mnist5k()
        x, y, xv, yv = raw.x[:4000], raw.y[:4000], raw.x[4000:4500], raw.y[4000:4500]
    # np.array copies: the prepared splits are read-only memory maps, which torch warns about
    t = lambda a, dt: torch.from_numpy(np.array(a)).to(dt).to(device)  # noqa: E731
    return (t(x, torch.float32), t(y, torch.long)), (t(xv, torch.float32), t(yv, torch.long))


def new_model(params, shape, device):
    spec = ModelSpec(structure=params.baseline.structure().model_dump(), input_shape=shape, num_classes=10,
                     mean=(33.0,) * shape[0], std=(78.0,) * shape[0])
    return build_model(spec).to(device)
