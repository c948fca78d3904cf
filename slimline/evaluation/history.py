"""Committed report history: a report as of a git revision, and metric deltas against it.

Both the regression gate and the stage reports compare with the last commit (what
`dvc metrics diff HEAD` shows); this is the one place that reads it.
"""
from __future__ import annotations

import json
from pathlib import Path

from slimline.repo import GitError, git


def flatten(d: dict, prefix: str = "") -> dict:
    """Scalar leaves of a nested report as dotted keys (lists are left out)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        elif isinstance(v, (int, float, str, bool)) or v is None:
            out[key] = v
    return out


def at_revision(root: Path, rel: str, rev: str = "HEAD") -> dict | None:
    """A JSON report as committed at `rev`, or None if it was not there."""
    try:
        return json.loads(git("show", f"{rev}:{rel}", cwd=root))
    except (GitError, json.JSONDecodeError):  # not committed there, or not JSON
        return None


def metric_deltas(root: Path, rel: str, rev: str = "HEAD") -> list[dict]:
    """Numeric metrics of reports/<stage>.json against `rev`, as `dvc metrics diff` shows them."""
    path = root / rel
    if not path.exists():
        return []
    now = flatten(json.loads(path.read_text()))
    before = flatten(at_revision(root, rel, rev) or {})
    rows = []
    for key, value in now.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or key.startswith("lineage."):
            continue  # evaluate's lineage (params, split sizes) says where a model came from: not a metric
        old = before.get(key)
        old = old if isinstance(old, (int, float)) and not isinstance(old, bool) else None
        rows.append({"metric": key, "previous": old, "now": value,
                     "change": None if old is None else value - old})
    return rows
