"""Stage `prune@<method>`: one pruned variant per method listed in prune.methods.

    python -m tasks.prune --method structured --data data/prepared --models models
                          --out models/pruned/structured [--params params.yaml]

The source model (prune.source: baseline or student) is pruned in steps with
fine-tuning after each (by default with the KD loss from the baseline), then
saved as safetensors + structure.json, so it rebuilds without pickle.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from slimline import numerics as numerics_mod
from slimline.compress import prune_report
from slimline.compress.kd import load_teacher, make_kd_loss
from slimline.data.dataset import load_prepared
from slimline.errors import StageError
from slimline.model import load_model, save_model
from slimline.params import PRUNE_METHODS, Params
from slimline.paths import LAYERS_FILE
from slimline.report import write_report
from slimline.stage import main
from slimline.training import distributed
from slimline.training.loop import evaluate, make_finetune, resolve_device, seed_everything

SECTIONS = ("prune", "train", "distill")  # the params it reads: dvc.yaml's `params` for this stage
SETTINGS = ("loader",)  # read too, but cannot change a result: not dvc.yaml params


def prune(params: Params, args: argparse.Namespace) -> None:
    from slimline.compress import pruning

    cfg, method, out = params.prune, args.method, args.out
    src_dir = args.models / cfg.source
    if not (src_dir / "structure.json").exists():
        stage = "train_baseline" if cfg.source == "baseline" else "distill"
        raise StageError(f"no source model in {src_dir}: run the `{stage}` stage first")
    prep = load_prepared(args.data)
    threads = distributed.threads_per_rank(params.train.num_threads, distributed.current().world)
    numerics = seed_everything(params.train.seed, threads, params.train.numerics)
    device = resolve_device(params.train.device)
    model, spec = load_model(src_dir)
    model = model.to(device)
    data, loader = prep.splits, params.loader  # read per batch from disk
    teacher = load_teacher(args.models / "baseline", device) if cfg.distill else None
    loss_fn = make_kd_loss(teacher, params.distill) if cfg.distill else None
    finetune = make_finetune(params.train, data, loss_fn, loader)
    source_acc = evaluate(model, data["val"], loader=loader)[1]

    example = torch.from_numpy(np.array(data["train"][0][:2])).float().to(device)
    job = pruning.PruneJob(cfg, example=example, finetune=finetune,
                           evaluate=lambda m: evaluate(m, data["val"], loader=loader)[1])
    try:  # under torchrun every rank prunes alike; each fine-tuning's DDP wrap checks that
        pruned = pruning.PRUNERS[method](model, spec, job)  # they agree and takes rank 0's weights
    except pruning.NotApplicable as why:
        if not distributed.current().writer:
            return
        report = pruning.write_not_applicable(out, method, str(why))
        write_report(f"prune_{method}", report, prune_report.not_applicable_markdown(method, str(why)),
                     run=numerics_mod.record(numerics, device))
        print(f"prune {method}: not applicable ({why}); wrote the marker in {out}", flush=True)
        return
    if not distributed.current().writer:  # rank 0 writes
        return
    model = pruned.model.cpu().eval()
    out_spec = pruning.saved_spec(model, pruned.spec)
    layers = {"ratios": cfg.ratios, "layers": pruned.layers, "allocation": pruned.allocation}
    save_model(model, out_spec, out, {LAYERS_FILE: layers} if method == "structured" else None)
    val_loss, val_acc = evaluate(model, data["val"], loader=loader)
    test_loss, test_acc = evaluate(model, data["test"], loader=loader)
    results = prune_report.results(method, cfg, model, out_spec, pruned, source_acc=source_acc,
                                   val_acc=val_acc, test_acc=test_acc, layers=layers)
    short = prune_report.shortfall(cfg, pruned.allocation)
    if short:
        print(f"prune {method}: WARNING: {short}", flush=True)
    write_report(f"prune_{method}", results, prune_report.markdown(method, cfg, results, out_spec, pruned),
                 run=numerics_mod.record(numerics, device))
    print(f"prune {method}: test accuracy {test_acc:.4f}, {results['params']:,} params, "
          f"{results['nonzero_params']:,} non-zero; wrote {out}", flush=True)


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", required=True, choices=PRUNE_METHODS)
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--models", required=True, type=Path, help="holds baseline/ and student/")
    p.add_argument("--out", required=True, type=Path)


if __name__ == "__main__":
    main("prune", prune, _args, SECTIONS, SETTINGS, trains=True)
