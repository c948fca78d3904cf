"""`dvc exp run -S` arguments from a {"section.key": value} dict: the one writer, for the
pipeline flow's overrides and the structure search's candidates alike."""
from __future__ import annotations

import math

import yaml


class OverrideError(ValueError):
    pass


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

