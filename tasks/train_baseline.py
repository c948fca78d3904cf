"""Stage `train_baseline`: train the `baseline` model with the `train` recipe (or import it).

    python -m tasks.train_baseline --data data/prepared --out models/baseline [--params params.yaml]

Every compression ratio downstream is measured against this model. A rerun
after SIGKILL resumes from the last epoch checkpoint (in .slimline/resume/).
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
CODE_DEPS = code_files("tasks.train_baseline")

SECTIONS = ("baseline", "train")  # the params it reads: dvc.yaml's `params` for this stage
SETTINGS = ("loader",)  # read too, but cannot change a result: not dvc.yaml params


def train_baseline(params: Params, args: argparse.Namespace) -> None:
    # torch is imported here, not above: a stage that relaunches itself as N ranks imports
    # it only in the ranks
    from slimline.training.report import baseline_markdown
    from slimline.training.trainer import model_spec, train_network
    from slimline.weights import weights_init

    prep = load_prepared(args.data)
    net = params.baseline
    key = {"baseline": net.model_dump(), "train": params.train.model_dump()}
    spec = model_spec(net, prep)
    t = train_network("train_baseline", spec, params.train, prep, args.out, key_params=key,
                      deps=[str(args.data), *CODE_DEPS, *stage_user_files("train_baseline", args.params)],
                      init=weights_init(net.weights, spec.model) if net.weights else None,
                      train=not net.skip_training, loader=params.loader)
    if not distributed.current().writer:  # under torchrun, rank 0 writes
        return
    r = t.results
    write_report("train_baseline", r, baseline_markdown(net, t), t.run)
    keep_run_record("train_baseline")
    print(f"train_baseline: test accuracy {r['test_accuracy']:.4f}, wrote {args.out}", flush=True)


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, type=Path, help="prepared dataset folder")
    p.add_argument("--out", required=True, type=Path, help="output model folder")


if __name__ == "__main__":
    main("train_baseline", train_baseline, _args, SECTIONS, SETTINGS, trains=True)
