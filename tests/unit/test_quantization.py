"""int8 and fp16 conversions (slimline.compress.quantization): agreement with fp32,
determinism, what each file holds, and clear errors on a bad source or calibration."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from slimline.compress.export import export_onnx
from slimline.compress.onnx_files import OUTPUT
from slimline.compress.quantization import convert_fp16, quantize_dynamic_int8, quantize_static_int8
from slimline.model import ModelSpec, build_model
from slimline.params import Structure
from slimline.runtime.onnxruntime import agreement, predict, session
from tests.support.onnx_models import SHAPE, make_data, onnx_files, ops


@pytest.fixture(scope="module")
def files(trained, tmp_path_factory) -> dict:
    """fp32 export and its three conversions, made once for the module."""
    return onnx_files(trained, tmp_path_factory.mktemp("onnx"))


@pytest.mark.parametrize("kind", ["dynamic", "static", "fp16"])
def test_conversions_agree_with_fp32_and_are_deterministic(files, kind, tmp_path):
    x, _ = make_data(1000, seed=6)
    ref = predict(files["fp32"], x)
    got = predict(session(files[kind]), x)
    assert got.dtype == np.float32 and got.shape == ref.shape
    assert agreement(ref, got) >= 0.99
    again = tmp_path / "again.onnx"
    if kind == "dynamic":
        quantize_dynamic_int8(files["fp32"], again)
    elif kind == "static":
        quantize_static_int8(files["fp32"], again, make_data(200, seed=2)[0], batch_size=64)
    else:
        convert_fp16(files["fp32"], again)
    assert again.read_bytes() == files[kind].read_bytes()


def test_static_is_qdq_with_float_logits(files):
    names = ops(files["static"])
    assert "QuantizeLinear" in names and "DequantizeLinear" in names
    model = onnx.load(files["static"])
    last = next(n for n in model.graph.node if OUTPUT in n.output)
    assert last.op_type == "Gemm"  # logits are not rounded to 8 bits


def test_fp16_has_half_weights_and_float_io(files):
    model = onnx.load(files["fp16"])
    float_inits = [t for t in model.graph.initializer
                   if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)]
    assert float_inits and all(t.data_type == onnx.TensorProto.FLOAT16 for t in float_inits)
    for value in (*model.graph.input, *model.graph.output):
        assert value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_int8_files_are_smaller_when_weights_dominate(tmp_path):
    spec = ModelSpec(structure=Structure(conv_channels=[4, 8], hidden=[256]).model_dump(),
                     input_shape=(1, 28, 28), num_classes=3, mean=(100.0,), std=(60.0,))
    torch.manual_seed(0)
    fp32, dyn, static = (tmp_path / f"{k}.onnx" for k in ("fp32", "dyn", "static"))
    export_onnx(build_model(spec), (1, 28, 28), fp32)
    quantize_dynamic_int8(fp32, dyn)
    calib = np.random.default_rng(0).uniform(0, 255, (32, 1, 28, 28)).astype(np.float32)
    quantize_static_int8(fp32, static, calib, batch_size=8)
    size = fp32.stat().st_size
    assert dyn.stat().st_size < 0.5 * size and static.stat().st_size < 0.5 * size


@pytest.mark.parametrize("content", [None, b"this is not an onnx model"])
def test_missing_or_corrupt_source_is_a_clear_error(tmp_path, content):
    src, dst = tmp_path / "model.onnx", tmp_path / "out" / "q.onnx"
    if content is not None:
        src.write_bytes(content)
    calib = np.zeros((4, *SHAPE), np.float32)
    calls = [lambda: quantize_dynamic_int8(src, dst),
             lambda: quantize_static_int8(src, dst, calib, batch_size=2),
             lambda: convert_fp16(src, dst)]
    for call in calls:
        with pytest.raises(ValueError, match="model.onnx"):
            call()
    assert not dst.exists()


def test_bad_calibration_data_is_rejected(files, tmp_path):
    with pytest.raises(ValueError, match="calibration"):
        quantize_static_int8(files["fp32"], tmp_path / "q.onnx", np.zeros((0, *SHAPE), np.float32), 8)
