"""Stage `quantize`: export every model to ONNX and make ONNX Runtime variants.

    python -m tasks.quantize --data data/prepared --models models --out models/onnx [--params params.yaml]

For each trained model (baseline, distilled student, scratch student, each
pruned variant): an fp32 export checked against torch, then the variants in
quantize.variants (dynamic int8, static int8 QDQ per-channel, fp16). A variant whose
val accuracy falls more than quantize.max_accuracy_drop below its fp32 source's, or
whose top-1 predictions agree with it on fewer than quantize.min_agreement of the
test set, is left out, with the reason recorded. Static int8 first keeps its most
sensitive nodes in fp32 to fit (slimline/compress/sensitivity.py).
models/onnx/manifest.json lists what was written; evaluate reads it.
reports/sensitivity.md (and .png) says which layers hurt: each scanned static int8
variant's nodes, and each structured-pruned model's layers.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from slimline import numerics
from slimline.compress import sensitivity_report
from slimline.compress.variants import calibration_set, find_models, make_variants
from slimline.data.dataset import load_prepared
from slimline.io import atomic_dir, write_json, write_text
from slimline.params import Params
from slimline.stage import LAYERS_FILE, REPORTS, main, markdown_table, write_report

SECTIONS = ("quantize", "prune", "train")  # the params it reads: dvc.yaml's `params` for this stage


def quantize(params: Params, args: argparse.Namespace) -> None:
    cfg = params.quantize
    # The fp32 export runs torch (tracing, constant folding): same CPU math as training.
    state = numerics.apply(params.train.numerics, params.train.num_threads)
    torch.set_num_threads(params.train.num_threads)
    prep = load_prepared(args.data)
    x_test = prep.splits["test"][0].astype(np.float32)
    calib = calibration_set(prep, cfg)
    val = (prep.splits["val"][0].astype(np.float32), prep.splits["val"][1])
    rows, manifest, sensitivity = [], [], {}
    models = find_models(Path(args.models), params.prune.methods)
    with atomic_dir(args.out) as tmp:
        for name, folder in models.items():
            for e in make_variants(name, folder, tmp, x_test, calib, val, cfg):
                path, agree = e["path"], e["agreement"]
                reasons = [e["reason"]] if e["reason"] else []
                if not reasons and e["val_drop"] > cfg.max_accuracy_drop + 1e-12:
                    reasons.append(f"val accuracy {e['val_drop'] * 100:.2f} pt below {name} fp32, over "
                                   f"quantize.max_accuracy_drop {cfg.max_accuracy_drop * 100:.2f} pt")
                if agree is not None and agree < cfg.min_agreement:
                    reasons.append(f"top-1 agreement {agree:.4f} with {name} fp32 is below "
                                   f"quantize.min_agreement {cfg.min_agreement}")
                row = {"variant": path.stem, "source": name, "quantization": e["variant"],
                       "bytes": path.stat().st_size, "agreement": 1.0 if agree is None else agree,
                       "val_drop_pt": e["val_drop"] * 100, "fp32_node_count": len(e["fp32_nodes"]),
                       "passed": not reasons, "reason": "; ".join(reasons)}
                rows.append(row)
                if e["sensitivity"]:
                    sensitivity[path.stem] = {"fp32_nodes": e["fp32_nodes"], "nodes": e["sensitivity"]}
                if not reasons:
                    manifest.append({"name": path.stem, "file": path.name, "source": name,
                                     "source_dir": str(folder), "quantization": e["variant"],
                                     "opset": cfg.opset, "agreement": row["agreement"],
                                     # only when some are: manifests of unchanged variants stay byte-identical
                                     **({"fp32_nodes": e["fp32_nodes"]} if e["fp32_nodes"] else {})})
                else:
                    path.unlink()  # never handed to evaluate
                    print(f"quantize: {row['variant']} FAILED: {row['reason']}", flush=True)
                print(f"quantize: {path.stem}: {row['bytes']:,} bytes, agreement {row['agreement']:.4f}, "
                      f"val {0.0 - row['val_drop_pt']:+.2f} pt", flush=True)
        write_json(tmp / "manifest.json", {"variants": manifest,
                                           "calibration": {"batches": cfg.calibration_batches,
                                                           "batch_size": cfg.calibration_batch_size}})
    failed = [r for r in rows if not r["passed"]]
    md = (f"## quantize\n\n{len(rows) - len(failed)} ONNX models written to `{args.out}` "
          f"(opset {cfg.opset}); {len(failed)} variant(s) left out: val accuracy more than "
          f"{cfg.max_accuracy_drop * 100:.2f} pt below their fp32 source (static int8 first keeps up to "
          f"{cfg.max_excluded} of its most sensitive nodes in fp32), or top-1 agreement on test below "
          f"{cfg.min_agreement:.0%}.\n\n{markdown_table(rows)}\n\nWhich nodes and layers hurt accuracy: "
          f"`reports/sensitivity.md`.\n")
    write_report("quantize", {"variants": rows, "failed": [r["variant"] for r in failed],
                              **({"sensitivity": sensitivity} if sensitivity else {})}, md,
                 run=numerics.record(state, "cpu"))
    pruning = {name: json.loads((folder / LAYERS_FILE).read_text()) for name, folder in models.items()
               if (folder / LAYERS_FILE).exists()}
    sensitivity_report.chart(sensitivity, pruning, REPORTS / sensitivity_report.CHART)
    write_text(REPORTS / "sensitivity.md", sensitivity_report.render(sensitivity, pruning))


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--models", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)


if __name__ == "__main__":
    main("quantize", quantize, _args, SECTIONS)
