"""Params overrides, `{"train.epochs": 3}`, the one way they are read, checked and applied.

`dvc exp run -S` arguments from a {"section.key": value} dict: the one writer, for the
pipeline flow's overrides and the structure search's candidates alike; the one reader
of `-S key=value` strings; and the one way overrides are applied to a params dict.

A run's overrides are checked by the params schema, then written into params.yaml the
way `dvc exp run -S train.epochs=3` writes it (`validate`, `apply`). They never bypass
params.yaml: the stages read the edited file, dvc.lock records the values, and the run
is saved as a DVC experiment that shows them (`dvc exp show`).
"""
from __future__ import annotations

import copy
import math
from pathlib import Path

import yaml


class OverrideError(ValueError):
    """A bad override; str() names the key and what is allowed."""


def as_set_args(overrides: dict) -> list[str]:
    """`-S` arguments: key=value, in the override grammar DVC parses `-S` with (Hydra's):
    lists, null and numbers in flow style; strings quoted, since a bare `a,b` would
    be read as a sweep of two values."""
    out = []
    for key, value in overrides.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise OverrideError(f"override '{key}': {value} is not a usable value")
        if isinstance(value, str):
            text = "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
        else:
            text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
            text = text.removesuffix("\n...").strip()
        out.append(f"{key}={text}")
    return out


def parse_set_args(items: list[str]) -> dict:
    """`-S key=value` strings as an overrides dict (values parsed as YAML, as DVC does).
    Raises OverrideError for a string without `=`; a CLI turns it into its exit code."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise OverrideError(f"-S {item!r}: expected key=value, e.g. -S train.epochs=3")
        out[key.strip()] = yaml.safe_load(value)
    return out


def apply_to(raw: dict, overrides: dict) -> dict:
    """A copy of the params dict `raw` with the dotted-key overrides set."""
    raw = copy.deepcopy(raw)
    for key, value in overrides.items():
        parts = key.split(".")
        node = raw
        for i, part in enumerate(parts[:-1]):
            child = node.get(part) if isinstance(node, dict) else None
            if not isinstance(child, dict):
                raise OverrideError(f"override '{key}': '{'.'.join(parts[:i + 1])}' is not a section "
                                    f"of params.yaml; sections: {', '.join(sorted(raw))}")
            node = child
        node[parts[-1]] = value
    return raw


def validate(root: Path, overrides: dict) -> list[str]:
    """Check params.yaml with the overrides applied, as `slimline check` does; returns the -S
    arguments. Raises OverrideError naming the key (and what is allowed) before any work."""
    bad = [k for k in overrides if not isinstance(k, str) or not k or "=" in k]
    if bad:
        raise OverrideError(f"override keys must be dotted params keys like 'train.epochs', got {bad}")
    raw = yaml.safe_load((root / "params.yaml").read_text()) or {}
    # The whole file, as `slimline check` does: schema, the files it brings, the models.
    from slimline.check import problems

    message = problems(apply_to(raw, overrides) if overrides else raw, root,
                       "params.yaml with the overrides" if overrides else "params.yaml")
    if message:
        raise OverrideError(message)
    return as_set_args(overrides)


def apply(root: Path, overrides: dict) -> list[str]:
    """Validate, then edit params.yaml with DVC's own `-S` machinery (comments survive)."""
    from dvc.utils.hydra import apply_overrides

    args = validate(root, overrides)
    if args:
        apply_overrides(root / "params.yaml", args)
    return args
