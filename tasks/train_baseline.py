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
from slimline.stage import main, markdown_table, write_report
from slimline.training.trainer import keep_run_record, latency_line, model_spec, train_network
from slimline.weights import weights_init

# The code this stage runs, as in dvc.yaml: a change to it must not resume a stale run.
CODE_DEPS = code_files("tasks.train_baseline")

SECTIONS = ("baseline", "train")  # the params it reads: dvc.yaml's `params` for this stage


def train_baseline(params: Params, args: argparse.Namespace) -> None:
    prep = load_prepared(args.data)
    net = params.baseline
    key = {"baseline": net.model_dump(), "train": params.train.model_dump()}
    spec = model_spec(net, prep)
    t = train_network("train_baseline", spec, params.train, prep, args.out, key_params=key,
                      deps=[str(args.data), *CODE_DEPS, *stage_user_files("train_baseline", args.params)],
                      init=weights_init(net.weights, spec.model) if net.weights else None,
                      train=not net.skip_training)
    r = t.results
    md = (f"## train_baseline\n\nTest accuracy **{r['test_accuracy']:.4f}** "
          f"(val {r['val_accuracy']:.4f}) after {r['epochs']} epochs; {r['params']:,} params, "
          f"{r['flops'] / 1e6:.2f} MFLOPs per image.\n\n"
          + (f"Structure: `{r['structure']}`\n\n" if spec.model == "cnn" else
             f"Model `{spec.model}`" + (f" with `{net.kwargs}`" if net.kwargs else "")
             + (f", weights from `{net.weights}`" + (" (not retrained)" if net.skip_training else "")
                if net.weights else "") + ".\n\n") +
          f"Trained in {t.run['train_seconds']:.1f} s on {t.run['device']} "
          f"({t.run['samples_per_s']:.0f} samples/s). {latency_line(t.run)}\n\n### Epochs\n\n"
          f"{markdown_table(t.fit.history)}\n")
    write_report("train_baseline", r, md, t.run)
    keep_run_record("train_baseline")
    print(f"train_baseline: test accuracy {r['test_accuracy']:.4f}, wrote {args.out}", flush=True)


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, type=Path, help="prepared dataset folder")
    p.add_argument("--out", required=True, type=Path, help="output model folder")


if __name__ == "__main__":
    main("train_baseline", train_baseline, _args, SECTIONS)
