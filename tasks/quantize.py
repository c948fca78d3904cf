"""Stage `quantize`: export every model to ONNX and make ONNX Runtime variants.

    python -m tasks.quantize --data data/prepared --models models --out models/onnx [--params params.yaml]

For each trained model (baseline, distilled student, scratch student, each
pruned variant): an fp32 export checked against torch, then the variants in
quantize.variants (dynamic int8, static int8 QDQ per-channel, fp16). A variant
whose top-1 predictions agree with its fp32 source on fewer than
quantize.min_agreement of the test set is left out, with the reason recorded.
models/onnx/manifest.json lists what was written; evaluate reads it.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from slimline import numerics
from slimline.compress.variants import calibration_set, find_models, make_variants
from slimline.data.dataset import load_prepared
from slimline.io import atomic_dir, write_json
from slimline.params import Params
from slimline.stage import main, markdown_table, write_report

SECTIONS = ("quantize", "prune", "train")  # the params it reads: dvc.yaml's `params` for this stage


def quantize(params: Params, args: argparse.Namespace) -> None:
    cfg = params.quantize
    # The fp32 export runs torch (tracing, constant folding): same CPU math as training.
    state = numerics.apply(params.train.numerics, params.train.num_threads)
    torch.set_num_threads(params.train.num_threads)
    prep = load_prepared(args.data)
    x_test = prep.splits["test"][0].astype(np.float32)
    calib = calibration_set(prep, cfg)
    rows, manifest = [], []
    with atomic_dir(args.out) as tmp:
        for name, folder in find_models(Path(args.models), params.prune.methods).items():
            entries = make_variants(name, folder, tmp, x_test, calib, cfg)
            for path, variant, agree in entries:
                ok = agree is None or agree >= cfg.min_agreement
                row = {"variant": path.stem, "source": name, "quantization": variant,
                       "bytes": path.stat().st_size, "agreement": 1.0 if agree is None else agree,
                       "passed": ok,
                       "reason": "" if ok else f"top-1 agreement {agree:.4f} with {name} fp32 is below "
                                               f"quantize.min_agreement {cfg.min_agreement}"}
                rows.append(row)
                if ok:
                    manifest.append({"name": path.stem, "file": path.name, "source": name,
                                     "source_dir": str(folder), "quantization": variant,
                                     "opset": cfg.opset, "agreement": row["agreement"]})
                else:
                    path.unlink()  # never handed to evaluate
                    print(f"quantize: {row['variant']} FAILED: {row['reason']}", flush=True)
                print(f"quantize: {path.stem}: {row['bytes']:,} bytes, agreement {row['agreement']:.4f}",
                      flush=True)
        write_json(tmp / "manifest.json", {"variants": manifest,
                                           "calibration": {"batches": cfg.calibration_batches,
                                                           "batch_size": cfg.calibration_batch_size}})
    failed = [r for r in rows if not r["passed"]]
    md = (f"## quantize\n\n{len(rows) - len(failed)} ONNX models written to `{args.out}` "
          f"(opset {cfg.opset}); {len(failed)} variant(s) failed the "
          f"{cfg.min_agreement:.0%} top-1 agreement check.\n\n{markdown_table(rows)}\n")
    write_report("quantize", {"variants": rows, "failed": [r["variant"] for r in failed]}, md,
                 run=numerics.record(state, "cpu"))


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--models", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)


if __name__ == "__main__":
    main("quantize", quantize, _args, SECTIONS)
