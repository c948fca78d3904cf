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

import torch

from slimline import numerics as numerics_mod
from slimline.compress.kd import load_teacher, make_kd_loss
from slimline.compress.sparsity import sparsity
from slimline.data.dataset import load_prepared
from slimline.errors import StageError
from slimline.model import count_flops, count_params, load_model, save_model
from slimline.params import PRUNE_METHODS, Params
from slimline.stage import LAYERS_FILE, main, markdown_table, write_report
from slimline.training.loop import evaluate, make_finetune, resolve_device, seed_everything
from slimline.training.trainer import to_tensors

SECTIONS = ("prune", "train", "distill")  # the params it reads: dvc.yaml's `params` for this stage


def prune(params: Params, args: argparse.Namespace) -> None:
    from slimline.compress import pruning

    cfg = params.prune
    method = args.method
    out = args.out
    src_dir = args.models / cfg.source
    if not (src_dir / "structure.json").exists():
        stage = "train_baseline" if cfg.source == "baseline" else "distill"
        raise StageError(f"no source model in {src_dir}: run the `{stage}` stage first")
    prep = load_prepared(args.data)
    numerics = seed_everything(params.train.seed, params.train.num_threads, params.train.numerics)
    device = resolve_device(params.train.device)
    model, spec = load_model(src_dir)
    model = model.to(device)
    data = to_tensors(prep, device)
    loss_fn = make_kd_loss(load_teacher(args.models / "baseline", device), params.distill) if cfg.distill else None
    finetune = make_finetune(params.train, data, loss_fn)
    source_acc = evaluate(model, *data["val"])[1]

    job = pruning.PruneJob(cfg, example=data["train"][0][:2].float(), finetune=finetune,
                           evaluate=lambda m: evaluate(m, *data["val"])[1])
    try:
        pruned = pruning.PRUNERS[method](model, spec, job)
    except pruning.NotApplicable as why:
        report = pruning.write_not_applicable(out, method, str(why))
        write_report(f"prune_{method}", report, f"## prune ({method})\n\nNot applicable: {why}.\n",
                     run=numerics_mod.record(numerics, device))
        print(f"prune {method}: not applicable ({why}); wrote the marker in {out}", flush=True)
        return
    model = pruned.model.cpu().eval()
    out_spec = pruning.saved_spec(model, pruned.spec)
    layers = {"ratios": cfg.ratios, "layers": pruned.layers, "allocation": pruned.allocation}
    save_model(model, out_spec, out, {LAYERS_FILE: layers} if method == "structured" else None)
    nonzero, total = sparsity(model)
    cpu = data if device.type == "cpu" else to_tensors(prep, torch.device("cpu"))
    val_loss, val_acc = evaluate(model, *cpu["val"])
    test_loss, test_acc = evaluate(model, *cpu["test"])
    results = {"method": method, "source": cfg.source, "test_accuracy": test_acc, "val_accuracy": val_acc,
               "source_val_accuracy": source_acc, "params": count_params(model), "nonzero_params": nonzero,
               "sparsity": 1 - nonzero / total, "flops": count_flops(model, out_spec.input_shape),
               "amount": cfg.amount, "steps": cfg.steps, "structure": out_spec.structure,
               "ablation": pruned.ablation}
    if method == "structured":
        results.update(layers)
    md = (f"## prune ({method})\n\nFrom `{cfg.source}` (val {source_acc:.4f}): test accuracy "
          f"**{test_acc:.4f}** (val {val_acc:.4f}), {results['params']:,} params of which "
          f"{nonzero:,} non-zero ({results['sparsity']:.1%} sparse), "
          f"{results['flops'] / 1e6:.2f} MFLOPs.\n\n"
          + (f"Structure: conv {out_spec.structure['conv_channels']}, hidden {out_spec.structure['hidden']}.\n"
             if out_spec.model == "cnn" else f"Model `{out_spec.model}`, pruned.\n"))
    if pruned.layers:
        md += f"\n### Channels per layer (ratios: {cfg.ratios})\n\n" + markdown_table(pruned.layers) + "\n"
    if pruned.allocation:
        a = pruned.allocation
        md += (f"\nThe sensitivity scan's per-layer ratios give {a['flops']:,} FLOPs, against "
               f"{a['target_flops']:,} from `amount` {cfg.amount} uniformly (unpruned {a['base_flops']:,}); "
               f"drop threshold {a['threshold']:.4f}. `drop@r`: val accuracy lost with that layer alone "
               f"pruned by r, before fine-tuning.\n")
        if a["short_by"] > 0.02:
            why = (f"every layer at the largest of prune.scan_ratios {cfg.scan_ratios} removes "
                   f"{a['short_by']:.0%} less than the uniform budget: add a larger scan ratio")
            md += f"\n**Short of the FLOPs budget:** {why}.\n"
            print(f"prune {method}: WARNING: {why}", flush=True)
    if pruned.ablation:
        md += "\n### Layer ablation (val accuracy after removing each unit)\n\n" + markdown_table(
            [{k: v for k, v in row.items() if k != "structure"} for row in pruned.ablation]) + "\n"
    write_report(f"prune_{method}", results, md, run=numerics_mod.record(numerics, device))
    print(f"prune {method}: test accuracy {test_acc:.4f}, {results['params']:,} params, "
          f"{nonzero:,} non-zero; wrote {out}", flush=True)


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", required=True, choices=PRUNE_METHODS)
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--models", required=True, type=Path, help="holds baseline/ and student/")
    p.add_argument("--out", required=True, type=Path)


if __name__ == "__main__":
    main("prune", prune, _args, SECTIONS)
