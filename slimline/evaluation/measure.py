"""Measure every ONNX variant on every runtime the same way: accuracy, bytes, FLOPs,
latency on each runtime, torch latency. Each (variant, runtime) pair is a candidate,
named `variant@runtime` (selection.candidate).

Latency is timed like a careful benchmark, because the selection rests on it:
- `rounds` rounds; within each, every pair takes turns in short blocks of calls,
  alternating direction, so that every pair meets the machine's slow spells alike
  (time_rounds); every round's p50 is kept, and the selection compares pairs round by
  round, across runtimes too;
- the same settings for every file on a runtime (slimline/runtime/registry.py), and
  torch timed only after all of it (its thread pool must not be awake meanwhile);
- each runtime's floor, a one-op graph on the same input under the same settings, is
  timed in the same rounds: a pair's p50 as a multiple of its runtime's floor says how
  much latency is left to win at all.
benchmarks/evaluate_timing.py compares these p50s with fresh-process timings, and
benchmarks/runtimes.py the runtimes with each other.
"""
from __future__ import annotations

import gzip
import os
import platform
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from slimline.compress.onnx_files import OnnxFileError
from slimline.compress.sparsity import sparsity
from slimline.errors import StageError
from slimline.evaluation.selection import candidate, wilson_ci
from slimline.model import count_flops, count_params, load_model
from slimline.numerics import cpu_info
from slimline.runtime import registry
from slimline.runtime.timing import call_times, throughput

FLOOR = "runtime floor"  # the one-op graph's name among the timed entries: `runtime floor@openvino`
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


def time_rounds(callers: dict[str, Callable[[], object]], cfg, block: int = BLOCK,
                rewarm: int = REWARM) -> dict[str, dict[str, list[float]]]:
    """{name: {"p50": [per round], "p95": [...], "p99": [...]}} in ms, each caller being one
    batch-1 inference (a runner's `caller(1)`).

    A round cycles through every variant in blocks of `block` timed calls (after
    `rewarm` untimed ones: the first call after a switch finds cold caches), reversing
    the order each cycle, until each has `repeats` calls. So every variant's calls are
    spread over the whole round: a slow spell of the machine, which lasts from
    milliseconds to seconds, lands on all of them alike instead of on whichever
    variant was being timed, and round-by-round comparisons stay fair.
    """
    names = list(callers)
    for n in names:  # warm every model up once, before any round
        call_times(callers[n], warmup=cfg.warmup, repeats=1)
    out = {n: {"p50": [], "p95": [], "p99": []} for n in names}
    for r in range(cfg.rounds):
        got = {n: [] for n in names}  # this round's blocks of call times
        for cycle in range(-(-cfg.repeats // block)):  # ceil: the last block may be short
            k = min(block, cfg.repeats - cycle * block)
            for n in names if (r + cycle) % 2 == 0 else names[::-1]:
                got[n].append(call_times(callers[n], warmup=rewarm, repeats=k))
        for n in names:
            p50, p95, p99 = np.percentile(np.concatenate(got[n]) * 1e3, [50, 95, 99])
            out[n]["p50"].append(float(p50))
            out[n]["p95"].append(float(p95))
            out[n]["p99"].append(float(p99))
    return out


def runtime_records(cfg, floors: dict) -> dict:
    """reports/evaluate.json's "runtimes": each runtime's version, settings and floor."""
    return {r: {"version": registry.version(r), "settings": registry.settings(r, cfg.threads),
                "floor_p50_ms": floors[r]["p50_ms"], "floor_p50_ms_rounds": floors[r]["p50_ms_rounds"]}
            for r in cfg.runtimes}


def median(xs) -> float:
    return float(np.median(xs))


def against_fp32(variants: list[dict], test_top1: dict[str, np.ndarray], reference: str) -> None:
    """Set each pair's "agreement_with_fp32" (share of test images whose top-1 class is
    its fp32 source's on the same runtime) and "val_drop_vs_fp32" (its val accuracy below
    the source's, a fraction): what the quantize gate judges (selection.quantize_gate).
    Measured here, on the machine and runtime that evaluate, since int8 kernels differ
    between CPUs and runtimes; an fp32 export is its own source (1.0 and 0.0). A source
    that its runtime could not load is compared on the `reference` runtime."""
    fp32 = {(v["source"], v["runtime"]): v for v in variants if v["quantization"] == "fp32"}
    for v in variants:
        src = fp32.get((v["source"], v["runtime"])) or fp32.get((v["source"], reference))
        if src is None:
            raise StageError(f"{v['name']}: models/onnx/manifest.json has no fp32 export of its source "
                             f"{v['source']!r} to compare it with: rerun the `quantize` stage")
        mine, theirs = test_top1[v["name"]], test_top1[src["name"]]
        v["agreement_with_fp32"] = float(np.mean(mine == theirs)) if len(mine) else 1.0
        v["val_drop_vs_fp32"] = src["val_accuracy"] - v["val_accuracy"]


def load_runners(entries, shape, cfg) -> tuple[dict, list[dict]]:
    """({candidate: (entry, runtime, runner)}, skipped pairs). A runtime that is not
    installed stops the stage (with the install command); one that cannot load a file
    (an op it lacks) skips that pair, with its message, and every other pair runs."""
    for r in cfg.runtimes:
        why = registry.missing(r)
        if why:
            raise StageError(f"evaluate.runtimes: {why}")
    runners, skipped = {}, []
    for r in cfg.runtimes:
        for e in entries:
            try:
                runner = registry.load(r, Path(e["path"]), shape, cfg.threads)
            except (OnnxFileError, ValueError) as err:  # OnnxFileError: the runtime's message
                skipped.append({"variant": e["name"], "runtime": r, "reason": str(err)})
                print(f"evaluate: skipped {e['name']} on {r}: {err}", flush=True)
                continue
            runners[candidate(e["name"], r)] = (e, r, runner)
    return runners, skipped


def measure(entries, prep, cfg) -> tuple[list[dict], dict, list[dict]]:
    """(one record per (variant, runtime) pair, {runtime: its floor {"p50_ms", "p50_ms_rounds"}},
    the pairs skipped [{"variant", "runtime", "reason"}]), for entries as
    manifests.read_variants gives them."""
    (x_val, y_val), (x_test, y_test) = prep.splits["val"], prep.splits["test"]
    # memory-mapped: the runners read a batch at a time
    shape = prep.input_shape
    runners, skipped = load_runners(entries, shape, cfg)
    floors = {r: registry.floor(r, shape, cfg.threads) for r in cfg.runtimes}
    # Latency first, before any torch model is loaded and run.
    timed = time_rounds({candidate(FLOOR, r): f.caller(1) for r, f in floors.items()}
                        | {n: runner.caller(1) for n, (_, _, runner) in runners.items()}, cfg)
    floor = {r: {"p50_ms": median(timed[candidate(FLOOR, r)]["p50"]),
                 "p50_ms_rounds": timed[candidate(FLOOR, r)]["p50"]} for r in cfg.runtimes}
    variants, test_top1, sizes = [], {}, {}
    for name, (e, r, runner) in runners.items():
        val_correct = int((runner.predict(x_val).argmax(1) == y_val).sum())
        test_top1[name] = runner.predict(x_test).argmax(1)
        test_correct = int((test_top1[name] == y_test).sum())
        if e["path"] not in sizes:  # every runtime runs the same file: compress it once
            data = Path(e["path"]).read_bytes()
            sizes[e["path"]] = len(data), len(gzip.compress(data, mtime=0))
        t = timed[name]
        variants.append({
            "name": name, "variant": e["name"], "runtime": r, "precision": runner.precision,
            "source": e["source"], "quantization": e["quantization"],
            "accuracy": test_correct / len(y_test),
            "accuracy_ci95": list(wilson_ci(test_correct, len(y_test))),
            "val_accuracy": val_correct / len(y_val), "val_ci95": list(wilson_ci(val_correct, len(y_val))),
            "test_n": len(y_test), "val_n": len(y_val),
            "bytes": sizes[e["path"]][0], "gzip_bytes": sizes[e["path"]][1],
            "p50_ms_b1": median(t["p50"]), "p95_ms_b1": median(t["p95"]),
            "p99_ms_b1": median(t["p99"]), "p50_ms_b1_rounds": t["p50"],
            "floor_multiple": median(t["p50"]) / floor[r]["p50_ms"],
            "throughput_b256": throughput(runner.caller(256), batch=256),
        })
    del runners
    against_fp32(variants, test_top1, cfg.runtimes[0])
    # torch last: each source backs up to four ONNX variants, so load and count it once.
    entry = {e["name"]: e for e in entries}
    sources = {}
    for d in dict.fromkeys(e["source_dir"] for e in entries):
        model, _ = load_model(d)
        sources[d] = {"params": count_params(model), "nonzero_params": sparsity(model)[0],
                      "flops": count_flops(model, shape),
                      "torch_p50_ms_b1": torch_latency_ms(model, shape, cfg.warmup, cfg.repeats)}
    for v in variants:
        src = sources[entry[v["variant"]]["source_dir"]]
        fp32 = v["quantization"] == "fp32"
        # FLOPs are the source network's (a quantized form does the same operations);
        # torch latency is the fp32 network's, so only fp32 rows carry it.
        v.update(params=src["params"], nonzero_params=src["nonzero_params"], flops=src["flops"],
                 torch_p50_ms_b1=src["torch_p50_ms_b1"] if fp32 else None)
    return variants, floor, skipped
