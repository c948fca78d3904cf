"""Running and timing a model with ONNX Runtime (slimline.runtime.onnxruntime): predictions,
agreement, latency and throughput, the runtime floor, and clear errors on a bad file."""
from __future__ import annotations

import math

import numpy as np
import pytest

from slimline.runtime import onnxruntime as runtime
from slimline.runtime import timing
from tests.support.onnx_models import SHAPE, make_data


@pytest.fixture(scope="module")
def files(static_files) -> dict:
    return static_files


def test_predict_batches_and_agreement():
    a = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 3.0], [5.0, 4.0]])
    assert runtime.agreement(a, a[:, ::-1]) == 0.0
    assert runtime.agreement(a, a * 2) == 1.0
    with pytest.raises(ValueError, match="agreement"):
        runtime.agreement(a, a[:3])


def test_predict_is_independent_of_batch_size(files):
    x, _ = make_data(10, seed=7)
    np.testing.assert_allclose(runtime.predict(files["fp32"], x, batch_size=3),
                               runtime.predict(files["fp32"], x), rtol=1e-5, atol=1e-5)
    assert runtime.predict(files["fp32"], x[:0]).shape == (0, 3)
    with pytest.raises(ValueError, match=r"fp32\.onnx takes pixels of shape \(N, 1, 12, 12\)"):
        runtime.predict(runtime.session(files["fp32"]), x[:, :, :10])
    with pytest.raises(ValueError, match="fp32.onnx"):
        runtime.latency_ms(files["fp32"], (1, 28, 28))


def test_timing_helpers_return_sensible_numbers(files):
    for path in (files["fp32"], runtime.session(files["static"])):
        lat = runtime.latency_ms(path, SHAPE, warmup=2, repeats=20)
        assert set(lat) == {"p50", "p95", "p99", "mean"}
        assert all(math.isfinite(v) and v > 0 for v in lat.values())
        assert lat["p50"] <= lat["p95"] <= lat["p99"]
        tput = runtime.throughput(path, SHAPE, batch=32, warmup=1, repeats=3)
        assert math.isfinite(tput) and tput > 0


def test_runtime_floor_is_one_op_on_the_model_input():
    sess = runtime.floor_session(SHAPE)
    assert [i.shape for i in sess.get_inputs()] == [["batch", *SHAPE]]
    x = np.random.default_rng(0).uniform(-1, 1, (2, *SHAPE)).astype(np.float32)
    assert np.array_equal(runtime.predict(sess, x).reshape(x.shape), np.maximum(x, 0))  # Relu
    assert runtime.latency_ms(sess, SHAPE, warmup=2, repeats=20)["p50"] > 0


@pytest.mark.parametrize("content", [None, b"this is not an onnx model"])
def test_missing_or_corrupt_model_is_a_clear_error(tmp_path, content):
    src = tmp_path / "model.onnx"
    if content is not None:
        src.write_bytes(content)
    calib = np.zeros((4, *SHAPE), np.float32)
    calls = [lambda: runtime.session(src),
             lambda: runtime.predict(src, calib)]
    for call in calls:
        with pytest.raises(ValueError, match="model.onnx"):
            call()


def test_throughput_makes_fewer_calls_for_a_slow_model(trained, files, monkeypatch):
    """Batch-256 timing adapts its call count to the model's cost: at least 3 timed calls."""
    calls = []
    real = timing.call_times

    def counting(call, warmup, repeats):
        calls.append((warmup, repeats))
        return real(call, warmup, repeats)

    monkeypatch.setattr(timing, "call_times", counting)
    assert runtime.throughput(files["fp32"], SHAPE, batch=8) > 0
    assert calls == [(0, 1), (2, 10)]  # a fast model: 3 warm-up calls, 10 timed, as always
    calls.clear()
    runtime.throughput(files["fp32"], SHAPE, batch=8, budget_s=1e-9)  # as if one call took the budget
    assert calls == [(0, 1), (1, 3)]
