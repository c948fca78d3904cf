"""`dvc exp run -S` arguments from a {"section.key": value} dict: the one writer, for the
pipeline flow's overrides and the structure search's candidates alike; and the one reader
of `-S key=value` strings, and the one way overrides are applied to a params dict."""
from __future__ import annotations

import copy
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



def parse_set_args(items: list[str]) -> dict:
    """`-S key=value` strings as an overrides dict (values parsed as YAML, as DVC does)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"-S {item!r}: expected key=value, e.g. -S train.epochs=3")
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
