"""The default frontier: how small and how fast a distilled student can get, against the floor.

    python -m benchmarks.frontier_students [--structures '[[8,16],[32]]' '[[4,8],[32]]' ...]
                                           [--rounds 15]

For each student structure (conv_channels, hidden), a student is distilled from
models/baseline exactly as the distill stage does (params.yaml's student, train and
distill sections, only the widths changed), exported to ONNX and quantized to dynamic
int8 by the quantize stage's code. Then every file, the baseline's fp32 export and the
runtime floor (a one-op graph) are timed side by side on ONNX Runtime by the evaluate
stage's schedule (slimline.evaluation.measure.time_rounds), and the table gives each one's val accuracy,
bytes and batch-1 p50, as ratios to the baseline, and its p50 over the floor's.
Needs `dvc repro train_baseline` first.
"""
from __future__ import annotations

import tasks  # noqa: F401  (first: pins the CPU math before torch loads)

# isort: split

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

import numpy as np

from slimline.compress.export import export_onnx
from slimline.compress.kd import load_teacher, make_kd_loss
from slimline.compress.quantization import node_ops, quantize_dynamic_int8
from slimline.data.dataset import load_prepared
from slimline.evaluation.measure import time_rounds
from slimline.params import load_params
from slimline.runtime import registry
from slimline.runtime.onnxruntime import predict
from slimline.training.loop import resolve_device
from slimline.training.trainer import model_spec, train_network

DEFAULT = ['[[8, 16], [32]]', '[[8, 16], [24]]', '[[6, 12], [32]]', '[[4, 8], [32]]', '[[8, 16], []]',
           '[[4, 8], []]']


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--structures", nargs="+", default=DEFAULT, help="JSON [conv_channels, hidden] each")
    ap.add_argument("--rounds", type=int, default=15, help="timing rounds (evaluate uses 5)")
    args = ap.parse_args()
    root = Path.cwd()
    params = load_params(root / "params.yaml")
    prep = load_prepared(root / "data" / "prepared")
    cfg = params.train.model_copy(update={"epochs": params.distill.epochs or params.train.epochs})
    teacher = load_teacher(root / "models" / "baseline", resolve_device(cfg.device))
    x_val, y_val = prep.splits["val"][0].astype(np.float32), prep.splits["val"][1]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        os.chdir(out)  # training writes its logs relative to the cwd
        base_model, base_spec = teacher.cpu(), model_spec(params.baseline, prep)
        files = {"baseline": out / "baseline.onnx"}
        export_onnx(base_model, base_spec.input_shape, files["baseline"])
        acc = {"baseline": float(np.mean(predict(files["baseline"], x_val).argmax(1) == y_val))}
        for text in args.structures:
            conv, hidden = json.loads(text)
            name = f"conv{'x'.join(map(str, conv))}-hidden{'x'.join(map(str, hidden)) or 'none'}"
            student = params.student.model_copy(update={"conv_channels": conv, "hidden": hidden})
            spec = model_spec(student, prep)
            trained = train_network(name, spec, cfg, prep, out / name, key_params={"name": name}, deps=[],
                                    loss_fn=make_kd_loss(teacher, params.distill))
            files[name] = out / f"{name}.onnx"
            files[f"{name}.int8_dynamic"] = out / f"{name}.int8_dynamic.onnx"
            export_onnx(trained.model, spec.input_shape, files[name])
            quantize_dynamic_int8(files[name], files[f"{name}.int8_dynamic"])
            for n in (name, f"{name}.int8_dynamic"):
                acc[n] = float(np.mean(predict(files[n], x_val).argmax(1) == y_val))
        timing = argparse.Namespace(threads=params.evaluate.threads, warmup=params.evaluate.warmup,
                                    repeats=params.evaluate.repeats, rounds=args.rounds)
        shape, threads = base_spec.input_shape, timing.threads
        callers = {n: registry.load("onnxruntime", f, shape, threads).caller(1) for n, f in files.items()}
        callers["floor"] = registry.floor("onnxruntime", shape, threads).caller(1)
        rounds = time_rounds(callers, timing)
        p50 = {n: statistics.median(r["p50"]) for n, r in rounds.items()}
        print(f"\nruntime floor {p50['floor'] * 1e3:.1f} us; baseline {p50['baseline'] * 1e3:.1f} us, "
              f"val {acc['baseline']:.1%}; medians over {args.rounds} rounds\n")
        print("| variant | val acc. | ONNX nodes | bytes | bytes vs baseline | p50 (us) | p50 vs baseline "
              "| p50 / floor |\n|---|---|---|---|---|---|---|---|")
        for n, f in files.items():
            size = f.stat().st_size
            print(f"| {n} | {acc[n]:.1%} | {len(node_ops(f))} | {size:,} "
                  f"| {files['baseline'].stat().st_size / size:.1f}x | {p50[n] * 1e3:.1f} "
                  f"| {p50['baseline'] / p50[n]:.2f}x | {p50[n] / p50['floor']:.2f} |")


if __name__ == "__main__":
    main()
