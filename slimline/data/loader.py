"""Batches of a split, read from disk one batch at a time: by this process, or by DataLoader
worker processes that keep a GPU fed.

The caller decides every batch's rows (fit() shuffles with its own seeded generator), and
the loader only reads them: with N workers the same batches reach the model, in the same
order, as with none. A worker receives a prepared split as its path (Split pickles so) and
maps the file itself, so no pixels are copied between processes.
"""
from __future__ import annotations

from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from slimline.errors import StageError
from slimline.params import LoaderParams


class _Batches(torch.utils.data.Dataset):
    def __init__(self, data, rows: Sequence, augment: Callable | None) -> None:
        self.data, self.rows, self.augment = data, rows, augment

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.data  # a Split maps its file here, in the worker, on first use
        rows = self.rows[i]
        # np.array: a copy out of the memory map, so the batch owns writable memory
        xb = torch.from_numpy(np.array(x[rows]))
        if self.augment is not None:
            xb = self.augment(xb, rows)
        return xb, torch.from_numpy(np.array(y[rows], dtype=np.int64))


def batches(data, rows: Sequence, device: torch.device, cfg: LoaderParams | None = None,
            augment: Callable | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(x, y) of each batch in `rows` (each an array of row indices, in the order the model
    sees them, or a slice), in order, on `device`: pixels as stored (the caller converts
    them to float on the device), labels int64.

    data: a prepared Split or numpy arrays, read per batch; or torch tensors, which a
    caller holds in memory (on the device, for a set small enough), indexed directly.
    augment(images, rows): applied to each batch as it is read (slimline.data.augment)."""
    x, y = data
    if isinstance(x, torch.Tensor):
        for r in rows:
            index = r if isinstance(r, slice) else torch.from_numpy(r).to(x.device)
            xb = x[index] if augment is None else augment(x[index].cpu(), r)
            yield xb.to(device), y[index].long().to(device)
        return
    cfg = cfg or LoaderParams()
    workers = cfg.workers if len(rows) > 1 else 0  # one batch is not worth a process
    cuda = device.type == "cuda"
    loader = torch.utils.data.DataLoader(
        _Batches(data, rows, augment), batch_size=None, shuffle=False, num_workers=workers,
        prefetch_factor=cfg.prefetch if workers else None, pin_memory=cuda and cfg.pin_memory,
        # Its own generator: every DataLoader iterator draws a worker seed, from the global
        # RNG by default, which is dropout's checkpointed stream.
        generator=torch.Generator())
    try:
        for x, y in loader:
            yield x.to(device, non_blocking=cuda), y.to(device, non_blocking=cuda)
    except RuntimeError as err:
        if "DataLoader worker" not in str(err):
            raise
        raise StageError(f"a data loader worker died ({err}). Nothing was saved from this epoch; "
                         f"rerun to resume from the last checkpoint, and if memory ran out, lower "
                         f"loader.workers or loader.prefetch") from None


def in_order(n: int, batch_size: int) -> list[slice]:
    """Consecutive batches of range(n): evaluation reads a split front to back."""
    return [slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
