"""The incumbent: the variant last shipped and accepted, which a challenger must clearly beat.

`models/incumbent.json` is a committed file and a dep of the evaluate stage, so `dvc repro`
by hand uses the committed one. evaluate only reads it; the pipeline flow writes it, after
the regression gate passes (flows/pipeline.py), so DVC sees no cycle. Its content is the
variant's name only (no time, commit or measured number), so that accepting the same
variant again leaves its bytes, and evaluate's status, unchanged.

    {"variant": "student.int8_dynamic"}     an incumbent
    {"variant": null}                       none: evaluate applies its rule as on a first run

A missing file also means "none" to evaluate, but DVC refuses to run a stage whose dep is
missing: reset by writing `{"variant": null}` (`slimline incumbent --reset`).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from slimline.errors import StageError
from slimline.io import write_json

PATH = Path("models/incumbent.json")
KEYS = {"variant"}


class IncumbentError(StageError, ValueError):
    """The incumbent file exists but is not one this module wrote."""


def read(path: Path = PATH) -> str | None:
    """The incumbent variant's name, or None (no file, or no incumbent in it)."""
    if not path.exists():
        return None
    fix = f"fix it, or reset it: write {{\"variant\": null}} to {path} (`slimline incumbent --reset`)"
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise IncumbentError(f"{path} is not valid JSON ({err}); {fix}") from None
    if not isinstance(data, dict) or set(data) != KEYS:
        raise IncumbentError(f"{path} must hold exactly {sorted(KEYS)}, found "
                             f"{sorted(data) if isinstance(data, dict) else type(data).__name__}; {fix}")
    name = data["variant"]
    if name is not None and (not isinstance(name, str) or not name):
        raise IncumbentError(f"{path}: 'variant' must be a variant name or null, not {name!r}; {fix}")
    return name


def write(name: str | None, path: Path = PATH) -> bool:
    """Make `name` the incumbent (None: no incumbent). Returns whether the file changed;
    the same name again leaves it byte for byte as it was."""
    try:
        if path.exists() and read(path) == name:
            return False
    except IncumbentError:
        pass  # a broken file is replaced
    write_json(path, {"variant": name})  # atomic: a reader sees the old file or the new one
    return True


def main(argv: list[str] | None = None) -> int:
    """`slimline incumbent [--reset]`: show the incumbent, or reset it (the next evaluate
    chooses as on a first run). Reset after a change that makes the old choice meaningless
    (new hardware, a new runtime, a retrained family) or to let a near-tie challenger in."""
    ap = argparse.ArgumentParser(prog="slimline incumbent", description=main.__doc__.splitlines()[0])
    ap.add_argument("--file", type=Path, default=PATH, help=f"default: {PATH}")
    ap.add_argument("--reset", action="store_true", help='write {"variant": null}')
    args = ap.parse_args(argv)
    if args.reset:
        changed = write(None, args.file)
        print(f"{args.file}: no incumbent" + ("" if changed else " (already)") + "; commit it")
        return 0
    try:
        name = read(args.file)
    except IncumbentError as err:
        print(f"slimline incumbent: {err}")
        return 2
    print(f"{args.file}: " + (f"incumbent {name}" if name else "no incumbent"))
    return 0

