"""Data-parallel training against one process, at the same global batch: samples/s and the
accuracy each reaches after the same epochs.

    python -m benchmarks.ddp [--nproc 2] [--epochs 3] [--rounds 2] [--device cpu|cuda]

Prepares the default data (the 5,000 packaged MNIST digits) once in a temporary project,
then runs the real `train_baseline` stage there with train.distributed.nproc_per_node 1
and N, alternating, `--rounds` times each. Same recipe, seed, epochs and global batch
(train.batch_size); on the CPU both use train.num_threads threads in all (N ranks split
them), so the comparison is of one process against N on the same cores. Printed: the
training samples/s of each (the epochs alone, from the run record) and the stage's wall
time (startup, torchrun and the ranks' imports included), their ratios, and the test
accuracy of each model. `--device cuda` runs the same on N GPUs.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]


def stage(project: Path, *args: str) -> float:
    """Run `python -m tasks.<args>` in project; its wall seconds."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", *args], cwd=project, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    if proc.returncode:
        sys.exit(f"{' '.join(args)} failed ({proc.returncode}):\n"
                 f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def train(project: Path, nproc: int, params: dict) -> dict:
    params["train"]["distributed"] = {"nproc_per_node": nproc}
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    wall = stage(project, "tasks.train_baseline", "--data", "data/prepared", "--out", f"models/ddp{nproc}")
    run = json.loads((project / "reports" / "train_baseline.run.json").read_text())
    results = json.loads((project / "reports" / "train_baseline.json").read_text())
    return {"samples_per_s": run["samples_per_s"], "wall_s": wall, "test_accuracy": results["test_accuracy"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--num-threads", type=int, default=2, help="train.num_threads: the stage's threads")
    args = ap.parse_args()
    params = {"train": {"epochs": args.epochs, "device": args.device, "num_threads": args.num_threads}}
    project = Path(tempfile.mkdtemp(prefix="slimline-ddp-", dir=ROOT.parent))
    try:
        for code in ("slimline", "tasks"):
            (project / code).symlink_to(ROOT / code)
        (project / "params.yaml").write_text(yaml.safe_dump(params))
        stage(project, "tasks.prepare", "--out", "data/prepared")
        runs: dict[int, list[dict]] = {1: [], args.nproc: []}
        for r in range(args.rounds):
            for n in runs:
                runs[n].append(train(project, n, json.loads(json.dumps(params))))
                print(f"round {r + 1}, {n} rank(s): {runs[n][-1]['samples_per_s']:.0f} samples/s, "
                      f"stage {runs[n][-1]['wall_s']:.1f} s, test accuracy "
                      f"{runs[n][-1]['test_accuracy']:.4f}", flush=True)
        med = {n: {k: float(np.median([r[k] for r in rs])) for k in ("samples_per_s", "wall_s")}
               for n, rs in runs.items()}
        one, many = med[1], med[args.nproc]
        batch = 64  # the default train.batch_size: the global batch of both
        print(f"\n{args.device}, global batch {batch}, {args.epochs} epochs, {args.num_threads} threads "
              f"in all, median of {args.rounds} alternating rounds:")
        print(f"  training samples/s: 1 process {one['samples_per_s']:.0f}, {args.nproc} ranks "
              f"{many['samples_per_s']:.0f}: {many['samples_per_s'] / one['samples_per_s']:.2f}x")
        print(f"  stage wall time: 1 process {one['wall_s']:.1f} s, {args.nproc} ranks "
              f"{many['wall_s']:.1f} s: {one['wall_s'] / many['wall_s']:.2f}x")
        print(f"  test accuracy: 1 process {runs[1][0]['test_accuracy']:.4f}, {args.nproc} ranks "
              f"{runs[args.nproc][0]['test_accuracy']:.4f} (each the same in every round: "
              f"{all(r['test_accuracy'] == rs[0]['test_accuracy'] for rs in runs.values() for r in rs)})")
    finally:
        shutil.rmtree(project, ignore_errors=True)


if __name__ == "__main__":
    main()
