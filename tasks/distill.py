"""Stage `distill`: Hinton knowledge distillation into the `student` model.

    python -m tasks.distill --data data/prepared --teacher models/baseline --out models/student
                            --scratch-out models/student_scratch [--params params.yaml]

In the same stage, the same student is trained from scratch with the same seed,
recipe, augmentation and epochs (the ablation), so the KD gain is a paired,
fair difference. With distill.features on, a third run adds FitNets feature
hints to the logit KD, and the logit-KD run becomes the ablation that measures
them (reported, not saved). All reuse the one training loop.
"""
from __future__ import annotations

import argparse
import tempfile
from dataclasses import asdict
from functools import partial
from pathlib import Path

from slimline.codedeps import code_files, stage_user_files
from slimline.compress.features import FeatureHints, describe_pairs, resolve_pairs
from slimline.compress.kd import load_teacher, make_kd_loss
from slimline.data.dataset import load_prepared
from slimline.errors import StageError
from slimline.io import replace_dir
from slimline.compress.student import describe, student_plan
from slimline.compress.student import size as student_size
from slimline.model import build_model, count_params, load_spec
from slimline.params import Params
from slimline.stage import main, markdown_table, write_report
from slimline.training.trainer import keep_run_record, latency_line, train_network

# The code this stage runs, as in dvc.yaml: a change to it must not resume a stale run.
CODE_DEPS = code_files("tasks.distill")

# The params it reads: dvc.yaml's `params` for this stage (of prune, only graph_timeout_s: derive's budget).
SECTIONS = ("student", "distill", "train", "prune")


def distill(params: Params, args: argparse.Namespace) -> None:
    prep = load_prepared(args.data)
    cfg = params.train.model_copy(update={"epochs": params.distill.epochs or params.train.epochs})
    from slimline.training.loop import resolve_device

    teacher = load_teacher(args.teacher, resolve_device(cfg.device))
    spec, init = student_plan(params.student, load_spec(args.teacher), params.prune.graph_timeout_s)
    if params.distill.require_smaller:
        # Against the teacher as trained (models/baseline, a dep), not params' baseline
        # section, which this stage does not read.
        s, t = student_size(spec, init), count_params(teacher)
        if s >= t:
            raise StageError(f"student has {s:,} params, the baseline {t:,}: the student must be "
                             f"smaller. Shrink `student`, or set distill.require_smaller: false")
    pairs = []
    if params.distill.features != "off":
        probe = build_model(spec)  # the student's modules, for the pairs (train_network reseeds)
        pairs = resolve_pairs(params.distill.features, teacher, init(probe) if init else probe, spec.input_shape)
    # The spec too: a derived student changes with its teacher's architecture.
    key = {"student": params.student.model_dump(), "train": cfg.model_dump(), "spec": asdict(spec)}
    deps = [str(args.data), *CODE_DEPS, *stage_user_files("distill", args.params)]
    # Each model is saved beside its target and moved in only when every training has
    # finished, so a failure in KD never leaves a new scratch model next to an old student.
    pending = {out: out.parent / f".{out.name}.pending" for out in (args.scratch_out, args.out)}
    train = partial(train_network, spec=spec, cfg=cfg, prep=prep, deps=deps, init=init, keep_checkpoints=True)
    scratch = train("distill_scratch", out_dir=pending[args.scratch_out], key_params=key)
    logit_cfg = params.distill.model_copy(update={"features": "off"})
    logit_key = {**key, "distill": params.distill.model_dump(exclude={"features", "feature_weight"})}
    kd_deps = [*deps, str(args.teacher)]
    if pairs:  # the logit-KD ablation: measured and reported, never an output
        with tempfile.TemporaryDirectory(prefix="slimline-logit-kd-") as logit_out:
            logit = train("distill_logit_kd", out_dir=logit_out, key_params=logit_key, deps=kd_deps,
                          loss_fn=make_kd_loss(teacher, logit_cfg), log=False)
        hints = FeatureHints(teacher, pairs, params.distill.feature_weight, cfg.seed)
        kd = train("distill", out_dir=pending[args.out],
                   key_params={**key, "distill": params.distill.model_dump()}, deps=kd_deps,
                   loss_fn=make_kd_loss(teacher, params.distill, hints), hints=hints)
        runs = [scratch, logit, kd]
    else:
        kd = logit = train("distill", out_dir=pending[args.out], key_params=logit_key, deps=kd_deps,
                           loss_fn=make_kd_loss(teacher, logit_cfg))
        runs = [scratch, kd]
    for out, tmp in pending.items():
        replace_dir(tmp, out)
    # All done: only now drop the checkpoints, so a kill during KD never retrains scratch.
    for r in runs:
        r.store.clear()

    r_kd, r_sc, r_lg = kd.results, scratch.results, logit.results
    results = {
        "test_accuracy": r_kd["test_accuracy"], "val_accuracy": r_kd["val_accuracy"],
        "scratch_test_accuracy": r_sc["test_accuracy"], "scratch_val_accuracy": r_sc["val_accuracy"],
        "kd_gain_test": r_kd["test_accuracy"] - r_sc["test_accuracy"],
        "kd_gain_val": r_kd["val_accuracy"] - r_sc["val_accuracy"],
        "params": r_kd["params"], "flops": r_kd["flops"], "epochs": cfg.epochs,
        "seed": cfg.seed, "temperature": params.distill.temperature, "alpha": params.distill.alpha,
        "structure": r_kd["structure"], "features": [[p.teacher, p.student] for p in pairs],
    }
    rows = [{"model": "distilled", "test_acc": r_kd["test_accuracy"], "val_acc": r_kd["val_accuracy"]},
            {"model": "scratch", "test_acc": r_sc["test_accuracy"], "val_acc": r_sc["val_accuracy"]}]
    how = f"KD (T={params.distill.temperature}, alpha={params.distill.alpha})"
    if pairs:
        results.update({"feature_weight": params.distill.feature_weight,
                        "logit_kd_test_accuracy": r_lg["test_accuracy"],
                        "logit_kd_val_accuracy": r_lg["val_accuracy"],
                        "feature_gain_test": r_kd["test_accuracy"] - r_lg["test_accuracy"],
                        "feature_gain_val": r_kd["val_accuracy"] - r_lg["val_accuracy"]})
        rows[0]["model"] = "distilled (logit + feature KD)"
        rows.insert(1, {"model": "logit KD only", "test_acc": r_lg["test_accuracy"],
                        "val_acc": r_lg["val_accuracy"]})
        how += (f" with feature hints (weight {params.distill.feature_weight}: "
                f"{describe_pairs(pairs)}), and the same KD without them,")
    elif params.distill.features != "off":
        how += " (distill.features found no pair of feature maps of the same size: logit KD only)"
    md = (f"## distill\n\nStudent {describe(spec, params.student)}, {results['params']:,} params. "
          f"{how} against the same student from scratch, same seed "
          f"({cfg.seed}) and recipe ({cfg.epochs} epochs):\n\n{markdown_table(rows)}\n\n"
          f"KD gain: **{results['kd_gain_test'] * 100:+.2f} pt** test, "
          f"{results['kd_gain_val'] * 100:+.2f} pt val"
          + (f"; of it, the feature hints' {results['feature_gain_test'] * 100:+.2f} pt test, "
             f"{results['feature_gain_val'] * 100:+.2f} pt val" if pairs else "")
          + f" (one seed; `python -m benchmarks.kd_gain` gives the paired mean over seeds).\n\n"
          f"Distilled student: {latency_line(kd.run)}\n")
    run = {"kd_train_seconds": kd.run["train_seconds"], "scratch_train_seconds": scratch.run["train_seconds"],
           **({"logit_kd_train_seconds": logit.run["train_seconds"]} if pairs else {}),
           "device": kd.run["device"],
           **{k: v for k, v in kd.run.items() if k.startswith("numerics")},
           **{k: kd.run[k] for k in ("ort_p50_ms_b1", "ort_p95_ms_b1", "ort_error") if k in kd.run}}
    write_report("distill", results, md, run)
    keep_run_record("distill")
    print(f"distill: KD {r_kd['test_accuracy']:.4f} vs scratch {r_sc['test_accuracy']:.4f} "
          f"({results['kd_gain_test'] * 100:+.2f} pt)"
          + (f", logit KD only {r_lg['test_accuracy']:.4f}" if pairs else ""), flush=True)


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--teacher", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--scratch-out", required=True, type=Path)


if __name__ == "__main__":
    main("distill", distill, _args, SECTIONS)
