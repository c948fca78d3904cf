"""Resumable training checkpoints: one small class, atomic writes, safe loads.

A checkpoint holds everything a rerun needs to continue bit-identically:
model, optimizer and scheduler state, every RNG state and the metric history.
Files are written with torch.save to a temp file and os.replace'd, so a SIGKILL
mid-write leaves the previous checkpoint intact; they are read back with
weights_only=True, so a checkpoint can never execute code.
"""
from __future__ import annotations

import io
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from slimline.io import atomic_write_bytes

_NAME = re.compile(r"^epoch-(\d{4,})\.pt$")


def rng_state() -> dict:
    """Every RNG a training step touches, as types weights_only loading accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": version, "state": list(py_state), "gauss": py_gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class CheckpointStore:
    """Epoch checkpoints in one folder: `epoch-0003.pt`, newest `keep` kept."""

    def __init__(self, folder: str | Path, keep: int = 2):
        self.folder = Path(folder)
        self.keep = keep

    def _files(self) -> list[tuple[int, Path]]:
        if not self.folder.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.folder.iterdir() if (m := _NAME.match(p.name))]
        return sorted(found)

    def save(self, epoch: int, state: dict) -> Path:
        buf = io.BytesIO()
        torch.save({**state, "epoch": epoch}, buf)
        path = self.folder / f"epoch-{epoch:04d}.pt"
        atomic_write_bytes(path, buf.getvalue())
        for _, old in self._files()[: -self.keep]:
            old.unlink(missing_ok=True)
        return path

    @staticmethod
    def _load(epoch: int, path: Path) -> dict | None:
        """The checkpoint in `path` if it loads and is epoch `epoch`'s; None otherwise."""
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - truncated or foreign file: never fatal, just older
            print(f"warning: ignoring unreadable checkpoint {path}: {err}")
            return None
        return state if state.get("epoch") == epoch else None

    def latest(self) -> dict | None:
        """The newest checkpoint that loads; a damaged one falls back to the one before."""
        for epoch, path in reversed(self._files()):
            state = self._load(epoch, path)
            if state is not None:
                return state
        return None

    def at(self, epoch: int) -> dict | None:
        """The checkpoint saved after `epoch`, if the store still keeps it and it loads."""
        path = self.folder / f"epoch-{epoch:04d}.pt"
        return self._load(epoch, path) if path.exists() else None

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
