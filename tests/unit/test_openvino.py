"""OpenVINO, the second CPU runtime (slimline.runtime.openvino), against ONNX Runtime on the
same files: logits, top-1, the runtime floor, the precision it computes in, and clear errors."""
from __future__ import annotations

import numpy as np
import pytest

from slimline.compress.onnx_files import OnnxFileError
from slimline.runtime import onnxruntime as ort_runtime
from slimline.runtime import openvino, registry
from tests.support.onnx_models import SHAPE, make_data


@pytest.fixture(scope="module")
def files(static_files) -> dict:
    return static_files


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return make_data(64, seed=5)[0]


def test_both_runtimes_agree_on_the_logits_of_an_fp32_model(files, x):
    runner = openvino.load(files["fp32"], SHAPE)
    got, want = runner.predict(x), ort_runtime.predict(files["fp32"], x)
    assert got.dtype == np.float32 and got.shape == want.shape == (64, 3)
    # both compute in f32, with their own kernels (summation order): equal to float rounding
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)
    assert runner.precision == "f32"


def test_both_runtimes_agree_on_the_top1_class_of_the_static_int8_file(files, x):
    got = registry.load("openvino", files["static"], SHAPE).predict(x)
    want = ort_runtime.predict(files["static"], x)
    assert ort_runtime.agreement(got, want) == 1.0  # int8 kernels differ; the classes may not


def test_predict_is_independent_of_batch_size_and_of_padding_the_last_batch(files, x):
    runner = openvino.load(files["fp32"], SHAPE)
    np.testing.assert_allclose(runner.predict(x, batch_size=5), runner.predict(x), rtol=1e-5, atol=1e-5)
    assert runner.predict(x[:0]).shape == (0, 3)
    with pytest.raises(ValueError, match=r"fp32\.onnx takes pixels of shape \(N, 1, 12, 12\)"):
        runner.predict(x[:, :, :10])
    with pytest.raises(ValueError, match=r"fp32\.onnx takes pixels of shape \(N, 1, 12, 12\), "
                                         r"got \(N, 1, 28, 28\)"):
        openvino.load(files["fp32"], (1, 28, 28))


def test_the_openvino_floor_is_one_relu_on_the_model_input():
    runner = registry.floor("openvino", SHAPE)
    assert [op.get_type_name() for op in runner.model.get_ordered_ops()] == ["Parameter", "Relu", "Result"]
    z = np.random.default_rng(0).uniform(-1, 1, (2, *SHAPE)).astype(np.float32)
    assert np.array_equal(runner.predict(z).reshape(z.shape), np.maximum(z, 0))
    runner.caller(1)()  # one timed call: its input bound once, on a reused request
    assert runner.precision == "f32"


def test_bf16_is_asked_for_by_name_and_the_precision_is_read_back(files, x):
    f32 = registry.load("openvino", files["fp32"], SHAPE, threads=2)
    assert f32.precision == "f32" and f32.settings["INFERENCE_NUM_THREADS"] == 2
    assert registry.settings("openvino", 2) == {"device": "CPU", "batch": "static (compiled per batch size)",
                                                **f32.settings}
    bf16 = registry.load("openvino-bf16", files["fp32"], SHAPE)
    assert bf16.settings["INFERENCE_PRECISION_HINT"] == registry.settings("openvino-bf16", 1)[
        "INFERENCE_PRECISION_HINT"] == "bf16"
    # what the CPU computes in, read back from the compiled model: bf16 where the CPU has it
    if "BF16" in openvino.core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        assert bf16.precision == "bf16"
    else:
        assert bf16.precision in {"bf16", "f32"}
    # bf16 changes the logits, not the classes of a confident model
    assert ort_runtime.agreement(bf16.predict(x), ort_runtime.predict(files["fp32"], x)) == 1.0


@pytest.mark.parametrize("content", [None, b"this is not an onnx model"])
def test_a_missing_or_corrupt_file_is_a_clear_error_on_every_runtime(tmp_path, content):
    src = tmp_path / "model.onnx"
    if content is not None:
        src.write_bytes(content)
    for name in ("onnxruntime", "openvino", "openvino-bf16"):
        with pytest.raises(OnnxFileError, match="model.onnx"):
            registry.load(name, src, SHAPE)
