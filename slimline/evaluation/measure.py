"""Measure every ONNX variant the same way: accuracy, bytes, FLOPs, ORT and torch latency.

Latency is timed like a careful benchmark, because the selection rests on it:
- `rounds` rounds; within each, the variants take turns in short blocks of calls,
  alternating direction, so that every variant meets the machine's slow spells alike
  (time_rounds); every round's p50 is kept, and the selection compares variants
  round by round;
- the same session options for every file, and torch timed only after all of it
  (its thread pool must not be awake while ONNX Runtime is timed);
- the runtime floor, a one-op graph on the same input under the same options, is
  timed in the same rounds: a model's p50 as a multiple of it says how much latency
  is left to win at all.
benchmarks/evaluate_timing.py compares these p50s with fresh-process timings.
"""
from __future__ import annotations

import gzip
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from slimline import runtime
from slimline.compress.sparsity import sparsity
from slimline.errors import StageError
from slimline.evaluation.selection import wilson_ci
from slimline.model import count_flops, count_params, load_model
from slimline.numerics import cpu_info

FLOOR = "runtime floor"  # the one-op graph's name among the timed entries
BLOCK, REWARM = 20, 2  # timed calls per turn of a variant within a round, untimed ones before them


def hardware(threads: int) -> dict:
    import onnxruntime

    cpu = cpu_info()
    return {"cpu": cpu["model"], "cpu_vendor": cpu["vendor"], "isa": cpu["isa"], "cores": os.cpu_count(),
            "threads": threads, "onnxruntime": onnxruntime.__version__, "torch": torch.__version__,
            "python": platform.python_version(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def torch_latency_ms(model, shape, warmup: int, repeats: int) -> float:
    x = torch.rand(1, *shape) * 255
    with torch.inference_mode():
        for _ in range(warmup):
            model(x)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t)
    return float(np.median(times) * 1e3)


def time_rounds(files: dict[str, Path | None], shape, cfg, block: int = BLOCK,
                rewarm: int = REWARM) -> dict[str, dict[str, list[float]]]:
    """{name: {"p50": [per round], "p95": [...], "p99": [...]}} at batch 1. A None file is
    the runtime floor.

    A round cycles through every variant in blocks of `block` timed calls (after
    `rewarm` untimed ones: the first call after a switch finds cold caches), reversing
    the order each cycle, until each has `repeats` calls. So every variant's calls are
    spread over the whole round: a slow spell of the machine, which lasts from
    milliseconds to seconds, lands on all of them alike instead of on whichever
    variant was being timed, and round-by-round comparisons stay fair.
    """
    names = list(files)
    sessions = {n: runtime.floor_session(shape, cfg.threads) if p is None else runtime.session(p, cfg.threads)
                for n, p in files.items()}
    for n in names:  # warm every session up once, before any round
        runtime.timings(sessions[n], shape, batch=1, warmup=cfg.warmup, repeats=1)
    out = {n: {"p50": [], "p95": [], "p99": []} for n in names}
    for r in range(cfg.rounds):
        got = {n: [] for n in names}  # this round's blocks of call times
        for cycle in range(-(-cfg.repeats // block)):  # ceil: the last block may be short
            k = min(block, cfg.repeats - cycle * block)
            for n in names if (r + cycle) % 2 == 0 else names[::-1]:
                got[n].append(runtime.timings(sessions[n], shape, batch=1, warmup=rewarm, repeats=k))
        for n in names:
            p50, p95, p99 = np.percentile(np.concatenate(got[n]) * 1e3, [50, 95, 99])
            out[n]["p50"].append(float(p50))
            out[n]["p95"].append(float(p95))
            out[n]["p99"].append(float(p99))
    return out


def median(xs) -> float:
    return float(np.median(xs))


def against_fp32(variants: list[dict], test_top1: dict[str, np.ndarray]) -> None:
    """Set each variant's "agreement_with_fp32" (share of test images whose top-1 class is
    its fp32 source's) and "val_drop_vs_fp32" (its val accuracy below the source's, a
    fraction): what the quantize gate judges (selection.quantize_gate). Measured here, on
    the machine that evaluates, since int8 kernels differ between CPUs; an fp32 export
    is its own source (1.0 and 0.0)."""
    fp32 = {v["source"]: v for v in variants if v["quantization"] == "fp32"}
    for v in variants:
        src = fp32.get(v["source"])
        if src is None:
            raise StageError(f"{v['name']}: models/onnx/manifest.json has no fp32 export of its source "
                             f"{v['source']!r} to compare it with: rerun the `quantize` stage")
        mine, theirs = test_top1[v["name"]], test_top1[src["name"]]
        v["agreement_with_fp32"] = float(np.mean(mine == theirs)) if len(mine) else 1.0
        v["val_drop_vs_fp32"] = src["val_accuracy"] - v["val_accuracy"]


def measure(entries, onnx_dir: Path, prep, cfg) -> tuple[list[dict], dict]:
    """(variant records, floor record {"p50_ms", "p50_ms_rounds"})."""
    (x_val, y_val), (x_test, y_test) = prep.splits["val"], prep.splits["test"]
    x_val, x_test = x_val.astype(np.float32), x_test.astype(np.float32)
    shape = prep.input_shape
    # Latency first, before any torch model is loaded and run.
    timed = time_rounds({FLOOR: None} | {e["name"]: onnx_dir / e["file"] for e in entries}, shape, cfg)
    floor_ms = median(timed[FLOOR]["p50"])
    variants, test_top1 = [], {}
    for e in entries:
        name, path = e["name"], onnx_dir / e["file"]
        sess = runtime.session(path, threads=cfg.threads)
        val_correct = int((runtime.predict(sess, x_val).argmax(1) == y_val).sum())
        test_top1[name] = runtime.predict(sess, x_test).argmax(1)
        test_correct = int((test_top1[name] == y_test).sum())
        data = path.read_bytes()
        t = timed[name]
        variants.append({
            "name": name, "source": e["source"], "quantization": e["quantization"],
            "accuracy": test_correct / len(y_test),
            "accuracy_ci95": list(wilson_ci(test_correct, len(y_test))),
            "val_accuracy": val_correct / len(y_val), "val_ci95": list(wilson_ci(val_correct, len(y_val))),
            "test_n": len(y_test), "val_n": len(y_val),
            "bytes": len(data), "gzip_bytes": len(gzip.compress(data, mtime=0)),
            "ort_p50_ms_b1": median(t["p50"]), "ort_p95_ms_b1": median(t["p95"]),
            "ort_p99_ms_b1": median(t["p99"]), "ort_p50_ms_b1_rounds": t["p50"],
            "floor_multiple": median(t["p50"]) / floor_ms,
            "ort_throughput_b256": runtime.throughput(sess, shape, batch=256),
        })
        del sess
    against_fp32(variants, test_top1)
    # torch last: each source backs up to four ONNX variants, so load and count it once.
    sources = {}
    for d in dict.fromkeys(e["source_dir"] for e in entries):
        model, _ = load_model(d)
        sources[d] = {"params": count_params(model), "nonzero_params": sparsity(model)[0],
                      "flops": count_flops(model, shape),
                      "torch_p50_ms_b1": torch_latency_ms(model, shape, cfg.warmup, cfg.repeats)}
    for e, v in zip(entries, variants, strict=True):
        src = sources[e["source_dir"]]
        fp32 = e["quantization"] == "fp32"
        # FLOPs are the source network's (a quantized form does the same operations);
        # torch latency is the fp32 network's, so only fp32 rows carry it.
        v.update(params=src["params"], nonzero_params=src["nonzero_params"], flops=src["flops"],
                 torch_p50_ms_b1=src["torch_p50_ms_b1"] if fp32 else None)
    return variants, {"p50_ms": floor_ms, "p50_ms_rounds": timed[FLOOR]["p50"]}
