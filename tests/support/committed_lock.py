"""The committed dvc.lock's first stages, reproduced in a fresh copy of the project (the
default config, portable numerics): tests/e2e/test_committed_lock.py compares the two.

    python -m tests.support.committed_lock build DEST   # then DEST.ready (or DEST.failed)
"""
from __future__ import annotations

import sys
from pathlib import Path

from tests.support.background import build_main
from tests.support.project import copy_project, dvc

# The data and the baseline: later stages are covered on the tiny config (tests/tiny.lock)
# and by `make verify-lock`, whose full default chain would cost minutes here.
STAGES = ("prepare", "train_baseline")


def reproduce(dest: Path) -> Path:
    """A fresh copy with STAGES rerun from scratch (its dvc.lock holds the new hashes)."""
    root = copy_project(dest)
    dvc("repro", STAGES[-1], cwd=root)
    return root


if __name__ == "__main__":
    build_main(sys.argv[1:], reproduce, __doc__)
