"""KD gain over seeds: scratch, logit KD, and logit + feature KD, paired by seed.

    python -m benchmarks.kd_gain [--seeds 0 1 2] [--feature-weights 1.0 ...]
                                 [--set distill.temperature=2 --set student.conv_channels=[4,8]]
                                 [--train-limit N] [--split val|test]

For each seed, a baseline (teacher) is trained with that seed; then the student is
trained from scratch, by logit KD from that teacher, and by logit KD plus FitNets
feature hints (distill.features: auto unless --set gives pairs) at each feature weight,
all with the same seed, recipe and augmentation. Prints val and test accuracy of each,
the paired differences, and mean +/- std over seeds. Target: logit + feature KD
>= +0.5 pt over scratch, no divergence. Tune on --split val; report test.

--train-limit N trains every model on a fixed random N of the train images (val and
test stay whole): a harder config, where the teacher has more to give.
Uses the prepared data in data/prepared (run `dvc repro prepare` first) and
params.yaml with the --set overrides for everything else.
"""
from __future__ import annotations

import tasks  # noqa: F401  (first: pins the CPU math before torch loads)

# isort: split

import argparse
import os
import statistics
import tempfile
from pathlib import Path

import numpy as np

from slimline.compress.features import FeatureHints, auto_pairs, check_pairs, describe_pairs
from slimline.compress.kd import make_kd_loss
from slimline.compress.student import student_plan
from slimline.data.dataset import Prepared, load_prepared
from slimline.model import build_model
from slimline.overrides import OverrideError, apply_to, parse_set_args
from slimline.params import load_params, parse_params
from slimline.training.loop import resolve_device
from slimline.training.trainer import model_spec, train_network


def subsample(prep: Prepared, n: int | None) -> Prepared:
    if not n:
        return prep
    x, y = prep.splits["train"]
    keep = np.sort(np.random.default_rng(0).permutation(len(y))[:n])
    return Prepared(splits={**prep.splits, "train": (x[keep], y[keep])}, meta=prep.meta)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--feature-weights", type=float, nargs="+", default=None,
                    help="one feature-KD arm per weight (default: distill.feature_weight)")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override params.yaml (YAML value), e.g. distill.alpha=0.9")
    ap.add_argument("--train-limit", type=int, default=None, help="train on this many images")
    ap.add_argument("--split", default="test", choices=["val", "test"], help="accuracy the summary uses")
    args = ap.parse_args()
    root = Path.cwd()
    # --set as `-S`: parsed, applied and checked by the whole schema as the flow's overrides are
    try:
        sets = parse_set_args(args.sets)
    except OverrideError as err:
        raise SystemExit(str(err)) from None  # a bad --set: its message, no traceback
    params = parse_params(apply_to(load_params(root / "params.yaml").model_dump(), sets),
                          "params.yaml with --set")
    dcfg = params.distill
    weights = list(dict.fromkeys(args.feature_weights or [dcfg.feature_weight]))  # 1 and 1.0 are one arm
    prep = subsample(load_prepared(root / "data" / "prepared"), args.train_limit)
    tcfg0 = params.train
    epochs = dcfg.epochs or tcfg0.epochs
    arms = ["scratch", "kd", *[f"feat@{w:g}" for w in weights]]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)  # training writes its logs relative to the cwd: keep them out of the repo
        for seed in args.seeds:
            tcfg = tcfg0.model_copy(update={"seed": seed})
            scfg = tcfg.model_copy(update={"epochs": epochs})

            def run(name, spec, cfg, loss=None, init=None, hints=None, seed=seed):
                return train_network(name, spec, cfg, prep, Path(tmp) / name,
                                     key_params={"seed": seed, "name": name},
                                     deps=[], loss_fn=loss, init=init, hints=hints, log=False)

            teacher = run("teacher", model_spec(params.baseline, prep), tcfg)
            t_model = teacher.model.to(resolve_device(tcfg.device))  # saved models come back on the CPU
            spec, init = student_plan(params.student, teacher.spec)
            probe = build_model(spec)
            probe = init(probe) if init else probe
            pairs = (auto_pairs(t_model, probe, spec.input_shape) if dcfg.features in ("auto", "off")
                     else check_pairs(t_model, probe, spec.input_shape, list(dcfg.features)))
            if not pairs:
                raise SystemExit("no feature pairs between this teacher and student: nothing to compare")
            logit_cfg = dcfg.model_copy(update={"features": "off"})
            row = {"seed": seed, "teacher": teacher.results}
            row["scratch"] = run("scratch", spec, scfg, init=init).results
            row["kd"] = run("kd", spec, scfg, make_kd_loss(t_model, logit_cfg), init=init).results
            for w in weights:
                hints = FeatureHints(t_model, pairs, w, seed)
                row[f"feat@{w:g}"] = run(f"feat{w:g}", spec, scfg, make_kd_loss(t_model, dcfg, hints),
                                         init=init, hints=hints).results
            rows.append(row)
            print(f"seed {seed} (pairs {describe_pairs(pairs)}):", flush=True)
            for arm in ["teacher", *arms]:
                r = row[arm]
                print(f"  {arm:12s} val {r['val_accuracy']:.4f}  test {r['test_accuracy']:.4f}", flush=True)
        os.chdir(root)

    def stat(vals):
        vals = [v * 100 for v in vals]
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        return f"{statistics.mean(vals):6.2f} +/- {sd:.2f}"

    key = f"{args.split}_accuracy"
    print(f"\n{args.split} accuracy, % over seeds {args.seeds} (T={dcfg.temperature}, alpha={dcfg.alpha}, "
          f"student epochs {epochs}, train images {len(prep.splits['train'][1])}"
          + (f", overrides {' '.join(args.sets)}" if args.sets else "") + "):")
    for arm in ["teacher", *arms]:
        print(f"  {arm:12s} {stat([r[arm][key] for r in rows])}")
    print("paired gains, pt (target: feature KD - scratch >= +0.5):")
    for arm in arms[1:]:
        print(f"  {arm:12s} - scratch {stat([r[arm][key] - r['scratch'][key] for r in rows])}")
    for arm in arms[2:]:
        print(f"  {arm:12s} - kd      {stat([r[arm][key] - r['kd'][key] for r in rows])}")


if __name__ == "__main__":
    main()
