"""Structured pruning, uniform against sensitivity-guided per-layer ratios, at equal FLOPs.

    python -m benchmarks.prune_ratios [--seeds 0 1 2] [--amount A] [--finetune-epochs N]

For each seed, a baseline is trained with that seed (params.yaml's recipe), then the
prune stage itself (tasks.prune, method structured) runs twice on it with the same seed:
prune.ratios uniform and sensitivity. Prints each seed's FLOPs, val and test accuracy, the
paired difference (sensitivity - uniform) and mean +/- std. Uses data/prepared (run
`dvc repro prepare` first) and params.yaml for everything not given on the command line.
"""
from __future__ import annotations

import tasks  # noqa: F401  (first: pins the CPU math before torch loads)

# isort: split

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

from slimline.data.dataset import load_prepared
from slimline.params import load_params
from slimline.training.trainer import model_spec, train_network
from tasks.prune import prune


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--amount", type=float, default=None)
    ap.add_argument("--finetune-epochs", type=int, default=None)
    args = ap.parse_args()
    root = Path.cwd()
    params = load_params(root / "params.yaml")
    data = root / "data" / "prepared"
    prep = load_prepared(data)
    update = {k: v for k, v in {"amount": args.amount, "finetune_epochs": args.finetune_epochs}.items()
              if v is not None}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)  # the stage writes reports/ and training logs relative to the cwd
        for seed in args.seeds:
            train = params.train.model_copy(update={"seed": seed})
            models = Path(tmp) / f"seed{seed}"
            train_network("baseline", model_spec(params.baseline, prep), train, prep, models / "baseline",
                          key_params={"seed": seed}, deps=[], loss_fn=None)
            row = {"seed": seed}
            for ratios in ("uniform", "sensitivity"):
                cfg = params.prune.model_copy(update={**update, "ratios": ratios, "source": "baseline"})
                prune(params.model_copy(update={"train": train, "prune": cfg}),
                      argparse.Namespace(method="structured", data=data, models=models,
                                         out=models / ratios))
                report = json.loads(Path("reports/prune_structured.json").read_text())
                row[ratios] = {k: report[k] for k in ("flops", "val_accuracy", "test_accuracy")}
                row[ratios]["widths"] = [layer["kept"] for layer in report["layers"]]
            rows.append(row)
            u, s = row["uniform"], row["sensitivity"]
            print(f"seed {seed}: uniform {u['widths']} {u['flops']:,} FLOPs val {u['val_accuracy']:.4f} "
                  f"test {u['test_accuracy']:.4f} | sensitivity {s['widths']} {s['flops']:,} FLOPs "
                  f"val {s['val_accuracy']:.4f} test {s['test_accuracy']:.4f}", flush=True)
    print("\n| seed | uniform widths | sensitivity widths | FLOPs (u / s) | val u | val s | test u | test s "
          "| test gain (pt) |\n|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        u, s = r["uniform"], r["sensitivity"]
        print(f"| {r['seed']} | {u['widths']} | {s['widths']} | {u['flops']:,} / {s['flops']:,} "
              f"| {u['val_accuracy']:.4f} | {s['val_accuracy']:.4f} | {u['test_accuracy']:.4f} "
              f"| {s['test_accuracy']:.4f} | {(s['test_accuracy'] - u['test_accuracy']) * 100:+.2f} |")
    for split in ("val", "test"):
        gains = [(r["sensitivity"][f"{split}_accuracy"] - r["uniform"][f"{split}_accuracy"]) * 100
                 for r in rows]
        spread = statistics.stdev(gains) if len(gains) > 1 else 0.0
        print(f"{split} gain, sensitivity - uniform: {statistics.mean(gains):+.2f} +/- {spread:.2f} pt "
              f"over {len(gains)} seeds")


if __name__ == "__main__":
    main()
