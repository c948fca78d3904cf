"""KD gain over seeds: the distilled student against the same student from scratch.

    python -m benchmarks.kd_gain [--seeds 0 1 2] [--temperature T] [--alpha A] [--epochs N]

For each seed, a baseline (teacher) is trained with that seed, then the student
is trained from scratch and by distillation from that teacher, with the same
seed, recipe and augmentation. Prints each seed's accuracies, the paired
difference, and mean +/- std. Target: mean KD gain >= +0.5 pt, no divergence.
Uses the prepared data in data/prepared (run `dvc repro prepare` first) and
params.yaml for everything not given on the command line.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

from slimline.data.dataset import load_prepared
from slimline.compress.kd import make_kd_loss
from slimline.params import load_params
from slimline.training.trainer import model_spec, train_network
from slimline.training.loop import resolve_device


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--temperature", type=float, default=None)
    ap.add_argument("--alpha", type=float, default=None)
    ap.add_argument("--epochs", type=int, default=None, help="student epochs (default: as params.yaml)")
    ap.add_argument("--split", default="test", choices=["val", "test"], help="accuracy reported")
    args = ap.parse_args()
    root = Path.cwd()
    params = load_params(root / "params.yaml")
    dcfg = params.distill.model_copy(update={k: v for k, v in
                                             {"temperature": args.temperature, "alpha": args.alpha}.items()
                                             if v is not None})
    prep = load_prepared(root / "data" / "prepared")
    key = f"{args.split}_accuracy"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)  # training writes its logs relative to the cwd: keep them out of the repo
        for seed in args.seeds:
            tcfg = params.train.model_copy(update={"seed": seed})
            scfg = tcfg.model_copy(update={"epochs": args.epochs or params.distill.epochs or tcfg.epochs})
            run = lambda name, net, cfg, loss=None: train_network(  # noqa: E731
                name, model_spec(net, prep), cfg, prep, Path(tmp) / name,
                key_params={"seed": seed, "name": name}, deps=[], loss_fn=loss)
            teacher = run("teacher", params.baseline, tcfg)
            scratch = run("scratch", params.student, scfg)
            device = resolve_device(tcfg.device)  # the saved teacher comes back on the CPU
            kd = run("kd", params.student, scfg, make_kd_loss(teacher.model.to(device), dcfg))
            row = {"seed": seed, "baseline": teacher.results[key], "scratch": scratch.results[key],
                   "kd": kd.results[key]}
            row["gain"] = row["kd"] - row["scratch"]
            rows.append(row)
            print(f"seed {seed}: baseline {row['baseline']:.4f}  scratch {row['scratch']:.4f}  "
                  f"kd {row['kd']:.4f}  gain {row['gain'] * 100:+.2f} pt", flush=True)
        os.chdir(root)

    def stat(k):
        vals = [r[k] * 100 for r in rows]
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        return f"{statistics.mean(vals):.2f} +/- {sd:.2f}"

    print(f"\n{args.split} accuracy over seeds {args.seeds} (T={dcfg.temperature}, alpha={dcfg.alpha}, "
          f"student epochs {args.epochs or params.distill.epochs or params.train.epochs}):")
    print(f"  baseline  {stat('baseline')} %")
    print(f"  scratch   {stat('scratch')} %")
    print(f"  distilled {stat('kd')} %")
    print(f"  KD gain (paired) {stat('gain')} pt  (target >= +0.5)")


if __name__ == "__main__":
    main()
