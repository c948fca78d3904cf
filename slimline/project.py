"""The user's project: the folder holding dvc.yaml, where DVC runs `python -m tasks.<stage>`.

A stage process imports a `python:<module>:<callable>` model from there because
`python -m` puts the working directory first on sys.path. Anything that builds models in
another process (the `slimline` console script, whose sys.path starts at the venv's bin/;
the flow's preflight) must resolve modules the same way, or a model that trains fine
fails its check. Torch-free: `slimline check` imports it before deciding whether it
needs torch at all.
"""
from __future__ import annotations

import sys
from pathlib import Path

MARKER = "dvc.yaml"


def find_root(start: Path | None = None) -> Path | None:
    """The nearest folder at or above `start` (default: the working directory) that holds
    dvc.yaml; None outside a project."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / MARKER).is_file():
            return folder
    return None


def importable(root: Path) -> None:
    """Put `root` first on sys.path, once, as `python -m` does for a stage: a second call,
    or a root already first, changes nothing."""
    entry = str(Path(root).resolve())
    if sys.path and sys.path[0] == entry:
        return
    if entry in sys.path:
        sys.path.remove(entry)  # an entry further down would lose to an installed namesake
    sys.path.insert(0, entry)
