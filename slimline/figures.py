"""Charts the stages write: matplotlib without a display, and PNG bytes that depend only on
the figure (no software/version stamp), written atomically."""
from __future__ import annotations

import io
from pathlib import Path

from slimline.io import atomic_write_bytes


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed), imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: Path) -> None:
    """Lay out, render at 110 dpi without metadata, close, and write `path` atomically."""
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
    pyplot().close(fig)
    atomic_write_bytes(path, buf.getvalue())
