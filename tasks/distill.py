"""Stage `distill`: Hinton knowledge distillation into the `student` model.

    python -m tasks.distill --data data/prepared --teacher models/baseline --out models/student
                            --scratch-out models/student_scratch [--params params.yaml]

In the same stage, the same student is trained from scratch with the same seed,
recipe, augmentation and epochs (the ablation), so the KD gain is a paired,
fair difference. Both reuse the one training loop.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from slimline.codedeps import code_files, stage_user_files
from slimline.compress.kd import load_teacher, make_kd_loss
from slimline.data.dataset import load_prepared
from slimline.errors import StageError
from slimline.io import replace_dir
from slimline.compress.student import describe, student_plan
from slimline.compress.student import size as student_size
from slimline.model import count_params, load_spec
from slimline.params import Params
from slimline.stage import main, markdown_table, write_report
from slimline.training.trainer import keep_run_record, latency_line, train_network

# The code this stage runs, as in dvc.yaml: a change to it must not resume a stale run.
CODE_DEPS = code_files("tasks.distill")

SECTIONS = ("student", "distill", "train")  # the params it reads: dvc.yaml's `params` for this stage


def distill(params: Params, args: argparse.Namespace) -> None:
    prep = load_prepared(args.data)
    cfg = params.train.model_copy(update={"epochs": params.distill.epochs or params.train.epochs})
    from slimline.training.loop import resolve_device

    teacher = load_teacher(args.teacher, resolve_device(cfg.device))
    spec, init = student_plan(params.student, load_spec(args.teacher))
    if params.distill.require_smaller:
        # Against the teacher as trained (models/baseline, a dep), not params' baseline
        # section, which this stage does not read.
        s, t = student_size(spec, init), count_params(teacher)
        if s >= t:
            raise StageError(f"student has {s:,} params, the baseline {t:,}: the student must be "
                             f"smaller. Shrink `student`, or set distill.require_smaller: false")
    key = {"student": params.student.model_dump(), "train": cfg.model_dump()}
    deps = [str(args.data), *CODE_DEPS, *stage_user_files("distill", args.params)]
    # Each model is saved beside its target and moved in only when both trainings have
    # finished, so a failure in KD never leaves a new scratch model next to an old student.
    pending = {out: out.parent / f".{out.name}.pending" for out in (args.scratch_out, args.out)}
    scratch = train_network("distill_scratch", spec, cfg, prep, pending[args.scratch_out],
                            key_params=key, deps=deps, keep_checkpoints=True, init=init)
    kd = train_network("distill", spec, cfg, prep, pending[args.out],
                       key_params={**key, "distill": params.distill.model_dump()},
                       deps=[*deps, str(args.teacher)], init=init,
                       loss_fn=make_kd_loss(teacher, params.distill), keep_checkpoints=True)
    for out, tmp in pending.items():
        replace_dir(tmp, out)
    # Both done: only now drop the checkpoints, so a kill during KD never retrains scratch.
    scratch.store.clear()
    kd.store.clear()

    r_kd, r_sc = kd.results, scratch.results
    results = {
        "test_accuracy": r_kd["test_accuracy"], "val_accuracy": r_kd["val_accuracy"],
        "scratch_test_accuracy": r_sc["test_accuracy"], "scratch_val_accuracy": r_sc["val_accuracy"],
        "kd_gain_test": r_kd["test_accuracy"] - r_sc["test_accuracy"],
        "kd_gain_val": r_kd["val_accuracy"] - r_sc["val_accuracy"],
        "params": r_kd["params"], "flops": r_kd["flops"], "epochs": cfg.epochs,
        "seed": cfg.seed, "temperature": params.distill.temperature, "alpha": params.distill.alpha,
        "structure": r_kd["structure"],
    }
    rows = [{"model": "distilled", "test_acc": r_kd["test_accuracy"], "val_acc": r_kd["val_accuracy"]},
            {"model": "scratch", "test_acc": r_sc["test_accuracy"], "val_acc": r_sc["val_accuracy"]}]
    md = (f"## distill\n\nStudent {describe(spec, params.student)}, {results['params']:,} params. "
          f"KD (T={params.distill.temperature}, "
          f"alpha={params.distill.alpha}) against the same student from scratch, same seed "
          f"({cfg.seed}) and recipe ({cfg.epochs} epochs):\n\n{markdown_table(rows)}\n\n"
          f"KD gain: **{results['kd_gain_test'] * 100:+.2f} pt** test, "
          f"{results['kd_gain_val'] * 100:+.2f} pt val (one seed; `python -m benchmarks.kd_gain` "
          f"gives the paired mean over seeds).\n\nDistilled student: {latency_line(kd.run)}\n")
    run = {"kd_train_seconds": kd.run["train_seconds"], "scratch_train_seconds": scratch.run["train_seconds"],
           "device": kd.run["device"],
           **{k: v for k, v in kd.run.items() if k.startswith("numerics")},
           **{k: kd.run[k] for k in ("ort_p50_ms_b1", "ort_p95_ms_b1", "ort_error") if k in kd.run}}
    write_report("distill", results, md, run)
    keep_run_record("distill")
    print(f"distill: KD {r_kd['test_accuracy']:.4f} vs scratch {r_sc['test_accuracy']:.4f} "
          f"({results['kd_gain_test'] * 100:+.2f} pt)", flush=True)


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--teacher", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--scratch-out", required=True, type=Path)


if __name__ == "__main__":
    main("distill", distill, _args, SECTIONS)
