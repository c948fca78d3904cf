"""Deployment overrides: `{"train.epochs": 3}` checked by the params schema, then
written into params.yaml the way `dvc exp run -S train.epochs=3` writes it.

They never bypass params.yaml: the stages read the edited file, dvc.lock
records the values, and the run is saved as a DVC experiment that shows them
(`dvc exp show`).
"""
from __future__ import annotations

from pathlib import Path

import yaml

from slimline.overrides import OverrideError, apply_to, as_set_args


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
