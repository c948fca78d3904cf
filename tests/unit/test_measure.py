"""evaluate's timing schedule (slimline.evaluation.measure.time_rounds), with the timer faked."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from slimline.evaluation import measure


def test_rounds_give_every_variant_repeats_calls_in_turns(monkeypatch):
    log = []  # (session, timed calls) in the order the blocks ran

    def timings(sess, shape, batch, warmup, repeats):
        log.append((sess, repeats))
        return np.full(repeats, {"floor": 1e-5, "a.onnx": 2e-5, "b.onnx": 4e-5}[sess])

    monkeypatch.setattr(measure.runtime, "timings", timings)
    monkeypatch.setattr(measure.runtime, "session", lambda path, threads: str(path))
    monkeypatch.setattr(measure.runtime, "floor_session", lambda shape, threads: "floor")
    cfg = SimpleNamespace(threads=1, warmup=7, rounds=5, repeats=50)
    out = measure.time_rounds({"floor": None, "a": "a.onnx", "b": "b.onnx"}, (1, 4, 4), cfg, block=20)

    assert log[:3] == [("floor", 1), ("a.onnx", 1), ("b.onnx", 1)]  # one warm-up pass first
    timed = log[3:]
    for sess in ("floor", "a.onnx", "b.onnx"):
        assert sum(n for s, n in timed if s == sess) == 5 * 50  # repeats per round, no more
    # blocks of 20, 20, 10, taking turns; the order reverses every cycle and every round
    assert timed[:9] == [("floor", 20), ("a.onnx", 20), ("b.onnx", 20), ("b.onnx", 20), ("a.onnx", 20),
                         ("floor", 20), ("floor", 10), ("a.onnx", 10), ("b.onnx", 10)]
    assert timed[9:12] == [("b.onnx", 20), ("a.onnx", 20), ("floor", 20)]  # round 2 starts reversed
    assert out["a"]["p50"] == [0.02] * 5 and out["b"]["p99"] == [0.04] * 5  # ms, one per round
