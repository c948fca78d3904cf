"""Stage `distill`: Hinton knowledge distillation into the `student` model.

    python -m tasks.distill --data data/prepared --teacher models/baseline --out models/student
                            --scratch-out models/student_scratch [--params params.yaml]

In the same stage, the same student is trained from scratch with the same seed,
recipe, augmentation and epochs (the ablation), so the KD gain is a paired,
fair difference. With distill.features on, a third run adds FitNets feature
hints to the logit KD, and the logit-KD run becomes the ablation that measures
them (reported, not saved). All reuse the one training loop; the experiment is
slimline/compress/distill.py, its report slimline/compress/distill_report.py.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from slimline.codedeps import code_files, stage_user_files
from slimline.data.dataset import load_prepared
from slimline.params import Params
from slimline.report import keep_run_record, write_report
from slimline.stage import main
from slimline.training import distributed

# The code this stage runs, as in dvc.yaml: a change to it must not resume a stale run.
CODE_DEPS = code_files("tasks.distill")

# The params it reads: dvc.yaml's `params` for this stage (of prune, only graph_timeout_s: derive's budget).
SECTIONS = ("student", "distill", "train", "prune")
SETTINGS = ("loader",)  # read too, but cannot change a result: not dvc.yaml params


def distill(params: Params, args: argparse.Namespace) -> None:
    # torch is imported here, not above: a stage that relaunches itself as N ranks imports
    # it only in the ranks
    from slimline.compress import distill_report
    from slimline.compress.distill import distill_student

    prep = load_prepared(args.data)
    cfg = params.train.model_copy(update={"epochs": params.distill.epochs or params.train.epochs})
    deps = [str(args.data), *CODE_DEPS, *stage_user_files("distill", args.params)]
    d = distill_student(params, cfg, prep, teacher_dir=args.teacher, out=args.out,
                        scratch_out=args.scratch_out, deps=deps)
    if not distributed.current().writer:  # under torchrun, rank 0 writes
        return
    results = distill_report.results(params, cfg, d)
    write_report("distill", results, distill_report.markdown(params, cfg, d, results),
                 distill_report.run_record(d))
    keep_run_record("distill")
    print(distill_report.summary_line(d, results), flush=True)


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--teacher", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--scratch-out", required=True, type=Path)


if __name__ == "__main__":
    main("distill", distill, _args, SECTIONS, SETTINGS, trains=True)
