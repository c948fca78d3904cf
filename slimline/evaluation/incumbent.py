"""The incumbent: the candidate (a variant on a runtime) last shipped and accepted, which a
challenger must clearly beat.

`models/incumbent.json` is a committed file and a dep of the evaluate stage, so `dvc repro`
by hand uses the committed one. evaluate only reads it; the pipeline flow writes it, after
the regression gate passes (flows/pipeline.py), so DVC sees no cycle. Its content is the
candidate's names only (no time, commit or measured number), so that accepting the same
one again leaves its bytes, and evaluate's status, unchanged.

    {"variant": "student.int8_dynamic", "runtime": "onnxruntime"}    an incumbent
    {"variant": null}                                                none: evaluate applies its
                                                                     rule as on a first run
A file without "runtime" (written before runtimes were chosen) names an onnxruntime one.

A missing file also means "none" to evaluate, but DVC refuses to run a stage whose dep is
missing: reset by writing `{"variant": null}` (`slimline incumbent --reset`).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from slimline.errors import StageError
from slimline.evaluation.selection import candidate, split_candidate
from slimline.io import write_json

PATH = Path("models/incumbent.json")
KEYS = ({"variant"}, {"variant", "runtime"})


class IncumbentError(StageError, ValueError):
    """The incumbent file exists but is not one this module wrote."""


def read(path: Path = PATH) -> str | None:
    """The incumbent candidate's name (`variant@runtime`), or None (no file, or no incumbent in it)."""
    if not path.exists():
        return None
    fix = f"fix it, or reset it: write {{\"variant\": null}} to {path} (`slimline incumbent --reset`)"
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise IncumbentError(f"{path} is not valid JSON ({err}); {fix}") from None
    if not isinstance(data, dict) or set(data) not in KEYS:
        raise IncumbentError(f"{path} must hold {sorted(KEYS[1])} (or 'variant' alone), found "
                             f"{sorted(data) if isinstance(data, dict) else type(data).__name__}; {fix}")
    name, runtime = data["variant"], data.get("runtime", "onnxruntime")
    if name is None:
        return None
    for key, value in (("variant", name), ("runtime", runtime)):
        if not isinstance(value, str) or not value:
            raise IncumbentError(f"{path}: '{key}' must be a {key} name, not {value!r}; {fix}")
    return candidate(name, runtime)


def write(name: str | None, path: Path = PATH) -> bool:
    """Make candidate `name` (`variant@runtime`) the incumbent (None: no incumbent). Returns
    whether the file changed; the same one again leaves it byte for byte as it was."""
    try:
        if path.exists() and read(path) == name:
            return False
    except IncumbentError:
        pass  # a broken file is replaced
    variant, runtime = split_candidate(name) if name else (None, None)
    # atomic: a reader sees the old file or the new one
    write_json(path, {"variant": variant, "runtime": runtime} if name else {"variant": None})
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

