"""Stage `quantize`: export every model to ONNX and make ONNX Runtime variants.

    python -m tasks.quantize --data data/prepared --models models --out models/onnx [--params params.yaml]

For each trained model (baseline, distilled student, scratch student, each
pruned variant): an fp32 export checked against torch, then the variants in
quantize.variants (dynamic int8, static int8 QDQ per-channel, fp16). Every variant is
written: models/onnx holds what the params and the models decide, no measured number,
so that it is the same on every CPU (docs/numerics.md names the one exception: which
nodes static int8 keeps in fp32, when it keeps any, comes from a scan). Static int8
first keeps its most sensitive nodes in fp32 to fit quantize.max_accuracy_drop
(slimline/compress/sensitivity.py); when it cannot, its best attempt is written and the
shortfall reported.
Each variant's measured top-1 agreement with its fp32 source and val accuracy drop go
to reports/quantize.json; evaluate measures them again on its own run and rejects a
variant that misses quantize.min_agreement or quantize.max_accuracy_drop (its quantize
gate).
models/onnx/manifest.json lists what was written; evaluate reads it.
reports/sensitivity.md (and .png) says which layers hurt: each scanned static int8
variant's nodes, and each structured-pruned model's layers.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from slimline import numerics
from slimline.compress import sensitivity_report
from slimline.compress.quantization import calibration_set
from slimline.compress.variants import find_models, make_variants
from slimline.data.dataset import load_prepared
from slimline.io import atomic_dir, write_json, write_text
from slimline.params import Params
from slimline.paths import LAYERS_FILE
from slimline.report import REPORTS, markdown_table, write_report
from slimline.stage import main

SECTIONS = ("quantize", "prune", "train")  # the params it reads: dvc.yaml's `params` for this stage


def quantize(params: Params, args: argparse.Namespace) -> None:
    cfg = params.quantize
    # The fp32 export runs torch (tracing, constant folding): same CPU math as training.
    state = numerics.apply(params.train.numerics, params.train.num_threads)
    torch.set_num_threads(params.train.num_threads)
    prep = load_prepared(args.data)
    x_test = prep.splits["test"][0]  # memory-mapped: every use reads a batch at a time
    calib = calibration_set(prep, cfg)
    val = tuple(prep.splits["val"])
    rows, manifest, sensitivity = [], [], {}
    models = find_models(Path(args.models), params.prune.methods)
    with atomic_dir(args.out) as tmp:
        for name, folder in models.items():
            for e in make_variants(name, folder, tmp, x_test, calib, val, cfg):
                row = report_row(name, e)
                rows.append(row)
                manifest.append(manifest_entry(name, folder, e, cfg))
                if e["sensitivity"]:
                    sensitivity[row["variant"]] = {"fp32_nodes": e["fp32_nodes"], "nodes": e["sensitivity"]}
                note = f"; {row['shortfall']}" if row["shortfall"] else ""
                print(f"quantize: {row['variant']}: {row['bytes']:,} bytes, "
                      f"agreement {row['agreement']:.4f}, val {0.0 - row['val_drop_pt']:+.2f} pt{note}",
                      flush=True)
        write_json(tmp / "manifest.json", {"variants": manifest,
                                           "calibration": {"batches": cfg.calibration_batches,
                                                           "batch_size": cfg.calibration_batch_size}})
    # shortfall: static int8 variants written over budget; evaluate measures them again and gates them
    shortfall = [r["variant"] for r in rows if r["shortfall"]]
    write_report("quantize", {"variants": rows, "shortfall": shortfall,
                              **({"sensitivity": sensitivity} if sensitivity else {})},
                 render(rows, cfg, args.out), run=numerics.record(state, "cpu"))
    pruning = {name: json.loads((folder / LAYERS_FILE).read_text()) for name, folder in models.items()
               if (folder / LAYERS_FILE).exists()}
    sensitivity_report.chart(sensitivity, pruning, REPORTS / sensitivity_report.CHART)
    write_text(REPORTS / "sensitivity.md", sensitivity_report.render(sensitivity, pruning))


def manifest_entry(name: str, folder: Path, e: dict, cfg) -> dict:
    """A variant's entry in models/onnx/manifest.json: what made the file, nothing measured
    (agreement and val drop vary with the CPU's int8 kernels; they belong to the reports)."""
    return {"name": e["path"].stem, "file": e["path"].name, "source": name, "source_dir": str(folder),
            "quantization": e["variant"], "opset": cfg.opset,
            # only when some are: manifests of unchanged variants stay byte-identical
            **({"fp32_nodes": e["fp32_nodes"]} if e["fp32_nodes"] else {})}


def report_row(name: str, e: dict) -> dict:
    """A variant's row in reports/quantize.json: this CPU's measurements of it."""
    agree = e["agreement"]
    return {"variant": e["path"].stem, "source": name, "quantization": e["variant"],
            "bytes": e["path"].stat().st_size, "agreement": 1.0 if agree is None else agree,
            "val_drop_pt": e["val_drop"] * 100, "fp32_node_count": len(e["fp32_nodes"]),
            "shortfall": e["shortfall"]}


def render(rows: list[dict], cfg, out: Path) -> str:
    short = [r for r in rows if r["shortfall"]]
    return (f"## quantize\n\n{len(rows)} ONNX models written to `{out}` (opset {cfg.opset}): every variant, "
            f"whatever its numbers. Static int8 keeps up to {cfg.max_excluded} of its most sensitive nodes "
            f"in fp32 to stay within {cfg.max_accuracy_drop * 100:.2f} pt of its fp32 source on val"
            + (f"; {len(short)} could not, and each holds its best attempt: "
               + "; ".join(f"`{r['variant']}`: {r['shortfall']}" for r in short) if short else "")
            # quantize.min_agreement is evaluate's alone: quantize does not read its value
            + ".\n\n`agreement` (top-1 with the fp32 source on test) and `val_drop_pt` are this CPU's "
            "measurements; `evaluate` measures them again and does not ship a variant under "
            "`quantize.min_agreement` or over `quantize.max_accuracy_drop` (its quantize gate).\n\n"
            f"{markdown_table(rows)}\n\nWhich nodes and layers hurt accuracy: `reports/sensitivity.md`.\n")


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--models", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)


if __name__ == "__main__":
    main("quantize", quantize, _args, SECTIONS)
