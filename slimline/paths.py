"""Where stage files live: the names one stage leaves for another, and resume folders."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

# In a method's output folder when it could not apply (its report says why): later stages skip it.
NOT_APPLICABLE = "not_applicable.json"
# In a structured-pruned model's folder: prune's per-layer table, which quantize reports.
LAYERS_FILE = "layers.json"
RESUME_ROOT = Path(".slimline/resume")  # ignored by git, never a DVC out


def resume_dir(stage: str, params: dict, dep_paths: list[str | Path]) -> Path:
    """A checkpoint folder keyed by the stage's params and the content of its deps,
    so that a changed config or changed data never resumes a stale run."""
    h = hashlib.sha256(json.dumps(params, sort_keys=True).encode())
    for dep in dep_paths:
        dep = Path(dep)
        files = sorted(p for p in dep.rglob("*")
                       if p.is_file() and "__pycache__" not in p.parts) if dep.is_dir() else [dep]
        for f in files:
            h.update(str(f).encode())
            with open(f, "rb") as stream:  # in blocks: a prepared split may be larger than memory
                while block := stream.read(1 << 20):
                    h.update(block)
    return RESUME_ROOT / f"{stage}-{h.hexdigest()[:16]}"
