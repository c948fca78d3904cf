"""Does the committed dvc.lock reproduce on this machine? (`make verify-lock`)

    python -m benchmarks.verify_lock [--until quantize] [--keep DIR]

Copies the project as a fresh clone sees it (tests.support.project.copy_project: the
tracked and untracked-but-not-ignored files, so no outputs and no DVC cache), drops the
copy's dvc.lock so that every stage runs, runs `dvc repro` of the default chain up to
`--until` (default quantize: prepare, train_baseline, distill, prune@*, quantize), and
compares the md5 of every data/ and models/ output of each stage it ran with the
committed dvc.lock. Prints each stage OK or what differs; exits 1 on any difference.

What it compares, and what not:
- data/ and models/ outputs (models/onnx included): these are promised bit-identical on
  any x86-64 CPU with AVX2 and FMA (docs/numerics.md);
- not reports/*.json and the other metrics: they are measurements, and may differ by CPU;
- not evaluate: its outputs (models/ship included) follow measured latency;
- a stage whose code deps or params differ from the committed entry is reported STALE:
  the lock was not made from this code, so its hashes prove nothing either way.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from tests.support.project import ROOT, copy_project, run_env

PORTABLE_PREFIXES = ("data/", "models/")


def lock_stages(path: Path) -> dict[str, dict]:
    """{stage: entry} of a dvc.lock, in its order."""
    return yaml.safe_load(path.read_text())["stages"]


def _md5s(items: list[dict], prefixes: tuple[str, ...] = ("",)) -> dict[str, str | None]:
    return {i["path"]: i.get("md5") for i in items or [] if i["path"].startswith(prefixes)}


def _produced(path: str, outs: set[str]) -> bool:
    """path is (in, or holds) another stage's output: models/pruned holds models/pruned/layer."""
    return any(path == o or o.startswith(path + "/") or path.startswith(o + "/") for o in outs)


def compare_stage(now: dict, committed: dict | None, outs: set[str]) -> list[str]:
    """What differs between a stage's fresh lock entry and its committed one ([] when it
    reproduces): first its own inputs (code, files and params: when those differ, the
    committed entry is stale and its hashes prove nothing), then its data/ and models/
    outputs. `outs`: every stage's output paths, whose differences show at their own stage."""
    if committed is None:
        return ["not in the committed dvc.lock"]
    deps, was = _md5s(now.get("deps")), _md5s(committed.get("deps"))
    changed = [p for p in sorted(set(deps) | set(was)) if deps.get(p) != was.get(p)]
    stale = [p for p in changed if not _produced(p, outs)]
    if now.get("params") != committed.get("params"):
        stale.append("params")
    mine, theirs = _md5s(now.get("outs"), PORTABLE_PREFIXES), _md5s(committed.get("outs"), PORTABLE_PREFIXES)
    diffs = [f"{p}: committed {theirs.get(p)}, here {mine.get(p)}"
             for p in sorted(set(mine) | set(theirs)) if mine.get(p) != theirs.get(p)]
    if stale:  # still compare the outputs: a reader wants to know, though it proves nothing
        return ([f"STALE: the committed entry was made from other inputs ({', '.join(stale)}): "
                 f"run `dvc repro` and commit dvc.lock first"]
                + (diffs or ["(its outputs match all the same)"]))
    upstream = [p for p in changed if p not in stale]
    return diffs + ([f"(its inputs from earlier stages differ too: {', '.join(upstream)})"]
                    if upstream and diffs else [])


def report(now: dict[str, dict], committed: dict[str, dict]) -> bool:
    """Print each stage OK or what differs; True when every stage reproduces."""
    outs = {o["path"] for entry in now.values() for o in entry.get("outs") or []}
    ok = True
    for stage, entry in now.items():
        diffs = compare_stage(entry, committed.get(stage), outs)
        mine = ", ".join(_md5s(entry.get("outs"), PORTABLE_PREFIXES)) or "no data/ or models/ outputs"
        print(f"{stage}: OK ({mine})" if not diffs else f"{stage}: DIFFERS", flush=True)
        for d in diffs:
            print(f"  {d}", flush=True)
        ok = ok and not diffs
    return ok


def reproduce(root: Path, until: str) -> dict[str, dict]:
    """`dvc repro until` in the copy at root, from nothing; its fresh lock entries."""
    (root / "dvc.lock").unlink()  # every stage up to `until` runs, and only those get entries
    cache = root.parent / "dvc-cache"  # never a cache shared through a user's or system dvc config
    (root / ".dvc" / "config.local").write_text(f"[cache]\n    dir = {cache}\n")
    cmd = [sys.executable, "-m", "dvc", "repro", "--no-run-cache", until]
    print(f"verify-lock: {' '.join(cmd[2:])} in {root}", flush=True)
    if subprocess.run(cmd, cwd=root, env=run_env()).returncode:
        raise SystemExit(f"verify-lock: `dvc repro {until}` failed in {root} (see its output above)")
    return lock_stages(root / "dvc.lock")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--until", default="quantize", help="the last stage to run (default: quantize)")
    p.add_argument("--keep", type=Path, help="build the copy here and keep it (default: a temp dir, removed)")
    args = p.parse_args(argv)
    if not (ROOT / "dvc.lock").exists():
        print("verify-lock: no committed dvc.lock", file=sys.stderr)
        return 1
    committed = lock_stages(ROOT / "dvc.lock")
    work = args.keep or Path(tempfile.mkdtemp(prefix="verify-lock."))
    try:
        root = copy_project(work / "project")
        ok = report(reproduce(root, args.until), committed)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    print("verify-lock: the committed dvc.lock reproduces" if ok else
          "verify-lock: FAILED: the committed dvc.lock does not match this run (the stages above say how)",
          flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
