"""Stages `qat@<model>` and `qat_prune@<method>`: quantization-aware training of one model
under KD from the baseline, exported as a static int8 file, `<model>.int8_qat`.

    python -m tasks.qat --model student --data data/prepared --models models
                        --out models/qat/student [--params params.yaml]

The model's static int8 is simulated in torch (slimline/compress/qat.py: ORT's scheme and
node placement), calibrated on quantize's calibration images by quantize's min/max rule,
fine-tuned for qat.epochs with the KD loss from models/baseline (distill's temperature and
alpha) and train's recipe at qat.lr, cosine-decayed; val accuracy picks the epoch. The
trained weights and ranges are written through ORT's quantize_static, so the file differs
from quantize's static variant only in its numbers. Weights that pruning zeroed stay zero.

models/qat/<model>/manifest.json lists the variant as quantize's manifest does; evaluate
reads it and gates it like every other variant. With qat.enabled false the stage writes
only that manifest, with no variant, and imports nothing heavy.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from slimline.io import atomic_dir, write_json
from slimline.params import Params
from slimline.paths import NOT_APPLICABLE
from slimline.report import markdown_table, write_report
from slimline.stage import main

# The params it reads: dvc.yaml's `params` for these stages are qat's recipe keys (not its
# model lists: each stage is one model), train, distill's KD loss and quantize's calibration
# and opset.
SECTIONS = ("qat", "train", "distill", "quantize")
SETTINGS = ("loader",)  # read too, but cannot change a result: not dvc.yaml params
VARIANT = "int8_qat"


def source_dir(models: Path, name: str) -> Path:
    """Where the model `name` (as quantize's manifest names it) is saved."""
    return models / "pruned" / name.removeprefix("prune_") if name.startswith("prune_") else models / name


def qat(params: Params, args: argparse.Namespace) -> None:
    name, cfg = args.model, params.qat
    stem = f"qat_{name}"
    src = source_dir(args.models, name)
    why = ("qat.enabled is false" if not cfg.enabled
           else f"{src} is not applicable: reports/{name}.json says why" if (src / NOT_APPLICABLE).exists()
           else "")
    if why:  # no variant: an empty manifest (evaluate lists nothing from it) and a report saying why
        with atomic_dir(args.out) as tmp:
            write_json(tmp / "manifest.json", {"variants": [], "disabled": why})
        write_report(stem, {"model": name, "enabled": cfg.enabled, "disabled": why},
                     f"## {stem}\n\nNo QAT variant: {why}.\n")
        print(f"{stem}: {why}; no variant", flush=True)
        return
    from slimline.compress.qat_run import train_and_export

    got = train_and_export(params, name, args.data, args.models / "baseline", src, args.out, VARIANT)
    write_report(stem, got.results, render(stem, got.results), run=got.run)
    r = got.results
    print(f"{stem}: {r['variant']}: val {r['val_accuracy']:.4f} (fp32 {r['fp32_val_accuracy']:.4f}), "
          f"test {r['test_accuracy']:.4f} (fp32 {r['fp32_test_accuracy']:.4f}), epoch {r['best_epoch']} "
          f"of {r['epochs']}; wrote {args.out}", flush=True)


def render(stem: str, r: dict) -> str:
    rows = [{"epoch": 0, "val_acc (fake int8, torch)": r["val_acc_calibrated"], "train_loss": "-"}]
    rows += [{"epoch": m["epoch"], "val_acc (fake int8, torch)": m["val_acc"], "train_loss": m["train_loss"]}
             for m in r["history"]]
    return (f"## {stem}\n\n`{r['variant']}`: {r['source']} fine-tuned for {r['epochs']} epoch(s) with fake "
            f"int8 under KD from the baseline, at lr {r['lr']:g}; epoch {r['best_epoch']} had the best val "
            f"accuracy and is exported as static int8 ({r['bytes']:,} bytes; epoch 0 is the calibrated model,"
            f" untrained: post-training quantization)"
            + (f"; {r['zeros_held']:,} pruned weights held at zero" if r["zeros_held"] else "") + ".\n\n"
            f"| | val | test |\n|---|---|---|\n"
            f"| fp32 source (ONNX Runtime) | {r['fp32_val_accuracy']:.4f} | {r['fp32_test_accuracy']:.4f} |\n"
            f"| QAT int8 file (ONNX Runtime) | {r['val_accuracy']:.4f} | {r['test_accuracy']:.4f} |\n\n"
            f"Top-1 agreement with the fp32 source on test: {r['agreement']:.4f}. `evaluate` measures the "
            f"variant again and gates it as every other (quantize.min_agreement, "
            f"quantize.max_accuracy_drop).\n\n{markdown_table(rows)}\n" + _blind(r.get("unsimulated") or []))


def _blind(ops: list[str]) -> str:
    """The tensors the int8 file quantizes that the fake quantization did not simulate."""
    if not ops:
        return ""
    nodes = list(dict.fromkeys(ops))  # a node with several outputs, named once
    return (f"\n**Not simulated in training:** {len(ops)} tensor(s) the int8 file quantizes, by ops the fake "
            f"quantization does not model; their ranges come from calibration alone: "
            + ", ".join(f"`{op}`" for op in nodes[:10])
            + (f" and {len(nodes) - 10} more" if len(nodes) > 10 else "") + ".\n")


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="baseline, student or prune_<method>")
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--models", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)


if __name__ == "__main__":
    main("qat", qat, _args, SECTIONS, SETTINGS)
