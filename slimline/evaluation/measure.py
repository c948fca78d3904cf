"""Measure every ONNX variant the same way: accuracy, bytes, FLOPs, ORT and torch latency.

Every model gets the same ONNX Runtime options, thread count and warm-up. Latency is
measured in two rounds in opposite orders (the best p50 of the two counts), since a
shared machine is noisy and a burst of noise should not decide the winner.
"""
from __future__ import annotations

import gzip
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from slimline.compress import onnx_tools as ox
from slimline.compress.pruning import sparsity
from slimline.evaluation.selection import wilson_ci
from slimline.model import count_flops, count_params, load_model
from slimline.numerics import cpu_info


def hardware(threads: int) -> dict:
    import onnxruntime

    return {"cpu": cpu_info()["model"], "cores": os.cpu_count(), "threads": threads, "onnxruntime": onnxruntime.__version__,
            "torch": torch.__version__, "python": platform.python_version(),
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


def measure(entries, onnx_dir: Path, prep, cfg) -> list[dict]:
    (x_val, y_val), (x_test, y_test) = prep.splits["val"], prep.splits["test"]
    x_val, x_test = x_val.astype(np.float32), x_test.astype(np.float32)
    shape = prep.input_shape
    sessions = {e["name"]: ox.session(onnx_dir / e["file"], threads=cfg.threads) for e in entries}
    p50 = {e["name"]: [] for e in entries}
    p95 = {e["name"]: [] for e in entries}
    for order in (entries, entries[::-1]):  # two rounds, opposite orders
        for e in order:
            lat = ox.latency_ms(sessions[e["name"]], shape, batch=1, warmup=cfg.warmup, repeats=cfg.repeats)
            p50[e["name"]].append(lat["p50"])
            p95[e["name"]].append(lat["p95"])
    # Each torch source backs up to four ONNX variants: load and count it once.
    sources = {}
    for d in dict.fromkeys(e["source_dir"] for e in entries):
        model, _ = load_model(d)
        sources[d] = (model, count_params(model), sparsity(model)[0])
    variants = []
    for e in entries:
        name, sess, path = e["name"], sessions[e["name"]], onnx_dir / e["file"]
        val_correct = int((ox.predict(sess, x_val).argmax(1) == y_val).sum())
        test_correct = int((ox.predict(sess, x_test).argmax(1) == y_test).sum())
        model, params, nonzero = sources[e["source_dir"]]
        data = path.read_bytes()
        best = int(np.argmin(p50[name]))
        fp32 = e["quantization"] == "fp32"
        variants.append({
            "name": name, "source": e["source"], "quantization": e["quantization"],
            "accuracy": test_correct / len(y_test), "accuracy_ci95": list(wilson_ci(test_correct, len(y_test))),
            "val_accuracy": val_correct / len(y_val), "params": params, "nonzero_params": nonzero,
            "bytes": len(data), "gzip_bytes": len(gzip.compress(data, mtime=0)),
            "flops": count_flops(model, shape) if fp32 else None,
            "ort_p50_ms_b1": p50[name][best], "ort_p95_ms_b1": p95[name][best],
            "ort_throughput_b256": ox.throughput(sess, shape, batch=256),
            "torch_p50_ms_b1": torch_latency_ms(model, shape, cfg.warmup, cfg.repeats) if fp32 else None,
            "agreement_with_fp32": e["agreement"],
        })
    return variants

