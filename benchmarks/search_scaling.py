"""Structure search scaling: the same N candidates with K=1 and K=2 local workers.

    python -m benchmarks.search_scaling [--candidates 4] [--epochs 3] [--workers 1 2] [--keep DIR]

Copies the project (tracked and untracked-but-not-ignored files, as a clone
with your uncommitted edits would look) into a temporary git repository, runs
`prepare` there once, then for each K runs the search flow (flows/search.py)
from scratch on the same N candidates (drawn from params.yaml's search grid
with seed 0, train.epochs set to --epochs): the copy's experiments and search
records are removed between runs. Torch threads are split, cores // K each, as
the search always does. Prints each wall time and the speed-up over K=1; the
target is >= 0.8 x K.

The ceiling: K x threads <= cores, so K workers gain only what one candidate
could not use of the machine by itself (its threads scale sublinearly on small
convolutions), minus the per-candidate work that is serial or shared: DVC
stashes each experiment under its repository lock, and every candidate starts
an interpreter and imports torch. Needs a Prefect server (PREFECT_API_URL),
else Prefect starts a temporary one (before the timings).
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from tests.support.project import copy_project, run_env


def sh(cmd: list[str], cwd: Path) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=run_env(), capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return proc.stdout


def configure(root: Path, candidates: int, epochs: int) -> None:
    """N candidates drawn from params.yaml's search grid with a fixed seed: the same N
    for every K."""
    path = root / "params.yaml"
    raw = yaml.safe_load(path.read_text())
    raw["search"].update(strategy="random", n=candidates, seed=0)
    raw["search"]["overrides"] = {**(raw["search"].get("overrides") or {}), "train.epochs": epochs}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


def reset(root: Path) -> None:
    sh([sys.executable, "-m", "dvc", "exp", "remove", "--all-commits"], root)
    shutil.rmtree(root / ".slimline" / "search", ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--candidates", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=3, help="train.epochs of every candidate")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--keep", type=Path, default=None, help="run in this folder and keep it")
    args = ap.parse_args()

    from prefect import flow

    from flows.search import cores, search, split_threads

    @flow(name="benchmark-warm-up")
    def warm_up() -> None:  # a temporary server, if any, starts here, outside the timings
        return None

    tmp = None if args.keep else tempfile.TemporaryDirectory(prefix="slimline-search-bench-")
    root = copy_project(Path(args.keep or tmp.name) / "proj")
    try:
        configure(root, args.candidates, args.epochs)
        sh(["git", "commit", "-qam", "benchmark search config"], root)
        print(f"preparing the data in {root} ...", flush=True)
        sh([sys.executable, "-m", "dvc", "repro", "prepare"], root)
        sh(["git", "add", "-A"], root)
        sh(["git", "commit", "-qm", "prepare"], root)
        warm_up()
        times = {}
        for k in args.workers:
            reset(root)
            start = time.perf_counter()
            result = search(root=str(root), workers=k)
            times[k] = time.perf_counter() - start
            failed = [r["name"] for r in result["records"] if r["status"] != "ok"]
            if failed:
                raise SystemExit(f"K={k}: candidates failed: {failed}")
            used_k, threads = split_threads(k, cores())
            print(f"K={k}: {len(result['records'])} candidates in {times[k]:.1f} s "
                  f"({used_k} at a time, {threads} torch thread(s) each)", flush=True)
        base = times.get(1)
        print(f"\n{args.candidates} candidates, {args.epochs} epoch(s) each, {cores()} cores:")
        for k, t in times.items():
            if base:
                speedup = base / t
                print(f"  K={k}: {t:6.1f} s  speed-up {speedup:.2f}x  (target >= {0.8 * k:.1f}x: "
                      f"{'met' if speedup >= 0.8 * k - 1e-9 else 'not met'})")
            else:
                print(f"  K={k}: {t:6.1f} s")
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    main()
