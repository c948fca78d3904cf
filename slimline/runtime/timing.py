"""Timing one inference call, the same way on every runtime: warm-up calls, then
`repeats` calls each inside its own perf_counter pair. The call is a function of no
arguments, built by the runtime's module with its input bound once, so that only the
inference is inside the timer."""
from __future__ import annotations

import time
from typing import Callable

import numpy as np


def call_times(call: Callable[[], object], warmup: int, repeats: int) -> np.ndarray:
    """Seconds per call, `repeats` of them after `warmup` untimed ones."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        call()
    times = np.empty(repeats)
    for i in range(repeats):
        t0 = time.perf_counter()
        call()
        times[i] = time.perf_counter() - t0
    return times


def percentiles_ms(times: np.ndarray) -> dict:
    """{"p50", "p95", "p99", "mean"} in milliseconds."""
    t = np.asarray(times) * 1e3
    p50, p95, p99 = np.percentile(t, [50, 95, 99])
    return {"p50": float(p50), "p95": float(p95), "p99": float(p99), "mean": float(t.mean())}


def throughput(call: Callable[[], object], batch: int, warmup: int = 3, repeats: int = 10,
               budget_s: float = 3.0) -> float:
    """Images per second of `call` (one inference on `batch` images) at the median call
    time (robust to one stray slow call). A model whose batch takes long gets fewer calls
    (at least 3 timed), so that measuring it stays within about budget_s: a big model
    must not make evaluate take minutes."""
    probe = float(call_times(call, 0, 1)[0])  # also the first warm-up call
    repeats = max(3, min(repeats, int(budget_s / max(probe, 1e-9))))
    warmup = min(max(warmup - 1, 0), repeats // 3)
    return float(batch / np.median(call_times(call, warmup, repeats)))


def seeded_input(shape: tuple) -> np.ndarray:
    """The fixed input every runtime is timed on: raw pixels 0..255, seed 0."""
    return np.random.default_rng(0).uniform(0, 255, shape).astype(np.float32)
