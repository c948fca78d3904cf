"""evaluate's measuring (slimline.evaluation.measure): the timing schedule with the timer
faked, which (variant, runtime) pairs run, and the comparison with each pair's fp32 source."""
from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import numpy as np
import pytest

from slimline.compress.onnx_files import OnnxFileError
from slimline.errors import StageError
from slimline.evaluation import measure


def test_rounds_give_every_variant_repeats_calls_in_turns(monkeypatch):
    log = []  # (caller's name, timed calls) in the order the blocks ran
    cost = {"floor": 1e-5, "a": 2e-5, "b": 4e-5}
    callers = {n: (lambda: None) for n in cost}  # one zero-arg call each, as a runner's caller(1)
    name_of = {id(c): n for n, c in callers.items()}

    def call_times(call, warmup, repeats):
        log.append((name_of[id(call)], repeats))
        return np.full(repeats, cost[name_of[id(call)]])

    monkeypatch.setattr(measure, "call_times", call_times)
    cfg = SimpleNamespace(threads=1, warmup=7, rounds=5, repeats=50)
    out = measure.time_rounds(callers, cfg, block=20)

    assert log[:3] == [("floor", 1), ("a", 1), ("b", 1)]  # one warm-up pass first
    timed = log[3:]
    for name in cost:
        assert sum(n for s, n in timed if s == name) == 5 * 50  # repeats per round, no more
    # blocks of 20, 20, 10, taking turns; the order reverses every cycle and every round
    assert timed[:9] == [("floor", 20), ("a", 20), ("b", 20), ("b", 20), ("a", 20),
                         ("floor", 20), ("floor", 10), ("a", 10), ("b", 10)]
    assert timed[9:12] == [("b", 20), ("a", 20), ("floor", 20)]  # round 2 starts reversed
    assert out["a"]["p50"] == [0.02] * 5 and out["b"]["p99"] == [0.04] * 5  # ms, one per round


def entries(folder):
    return [{"name": "baseline", "path": str(folder / "baseline.onnx")},
            {"name": "student.int8_static", "path": str(folder / "s.onnx")}]


def test_a_pair_its_runtime_cannot_load_is_skipped_and_the_others_run(monkeypatch, tmp_path, capsys):
    def load(name, path, shape, threads):
        if name == "openvino" and path.name == "s.onnx":
            raise OnnxFileError(f"OpenVINO cannot compile {path}: no kernel for DequantizeLinear")
        return SimpleNamespace(runtime=name, path=path, threads=threads)

    monkeypatch.setattr(measure.registry, "missing", lambda name: None)
    monkeypatch.setattr(measure.registry, "load", load)
    cfg = SimpleNamespace(runtimes=["onnxruntime", "openvino"], threads=2)
    runners, skipped = measure.load_runners(entries(tmp_path), (1, 12, 12), cfg)

    assert list(runners) == ["baseline@onnxruntime", "student.int8_static@onnxruntime", "baseline@openvino"]
    entry, runtime, runner = runners["baseline@openvino"]
    assert (entry, runtime, runner.path) == (entries(tmp_path)[0], "openvino", tmp_path / "baseline.onnx")
    assert runner.threads == 2  # evaluate.threads
    assert skipped == [{"variant": "student.int8_static", "runtime": "openvino",
                        "reason": f"OpenVINO cannot compile {tmp_path / 's.onnx'}: no kernel for "
                                  f"DequantizeLinear"}]
    assert "skipped student.int8_static on openvino: OpenVINO cannot compile" in capsys.readouterr().out


def test_a_runtime_that_is_not_installed_stops_evaluate_naming_the_fix(monkeypatch, tmp_path):
    loaded = []
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openvino"
                        else find_spec(name, *a))  # as on a machine without OpenVINO
    monkeypatch.setattr(measure.registry, "load", lambda *a: loaded.append(a))
    cfg = SimpleNamespace(runtimes=["onnxruntime", "openvino"], threads=1)
    with pytest.raises(StageError, match=r"evaluate\.runtimes: runtime openvino needs OpenVINO, which is not "
                                         r"installed: pip install -c constraints.txt openvino"):
        measure.load_runners(entries(tmp_path), (1, 12, 12), cfg)
    assert loaded == []  # before any work


def pair(variant, runtime, quant, val, top1) -> tuple[dict, np.ndarray]:
    return ({"name": f"{variant}@{runtime}", "variant": variant, "runtime": runtime, "source": "student",
             "quantization": quant, "val_accuracy": val}, np.array(top1))


def test_each_pair_is_compared_with_its_fp32_source_on_its_own_runtime():
    pairs = [pair("student", "onnxruntime", "fp32", 0.98, [0, 1, 2, 0]),
             pair("student", "openvino", "fp32", 0.97, [0, 1, 2, 1]),
             pair("student.int8_static", "onnxruntime", "static", 0.975, [0, 1, 2, 1]),
             pair("student.int8_static", "openvino", "static", 0.97, [0, 1, 2, 1]),
             # its runtime could not load the fp32 source: compared on the reference runtime
             pair("student.int8_dynamic", "openvino-bf16", "dynamic", 0.96, [0, 1, 1, 0])]
    variants, top1 = [v for v, _ in pairs], {v["name"]: t for v, t in pairs}
    measure.against_fp32(variants, top1, "onnxruntime")
    got = {v["name"]: (v["agreement_with_fp32"], round(v["val_drop_vs_fp32"], 6)) for v in variants}
    assert got == {"student@onnxruntime": (1.0, 0.0), "student@openvino": (1.0, 0.0),
                   "student.int8_static@onnxruntime": (0.75, 0.005),
                   "student.int8_static@openvino": (1.0, 0.0),
                   "student.int8_dynamic@openvino-bf16": (0.75, 0.02)}
    with pytest.raises(StageError, match="no fp32 export of its source 'student'"):
        measure.against_fp32(variants[2:], top1, "onnxruntime")
