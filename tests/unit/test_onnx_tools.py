"""ONNX export and conversions: validity, torch parity, determinism, agreement, errors."""
from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
import torch

from slimline.compress import onnx_tools as ot
from slimline.model import ModelSpec, build_model
from slimline.params import Structure

SHAPE = (1, 12, 12)
CORNERS = [(1, 1), (1, 7), (7, 4)]  # where each class's bright square sits


def make_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Three clearly separable classes: a bright 4x4 square in one of three places, plus noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.normal(40, 20, (n, *SHAPE))
    for i, label in enumerate(y):
        r, c = CORNERS[label]
        x[i, 0, r:r + 4, c:c + 4] += 150
    return x.clip(0, 255).astype(np.float32), y


def tiny_model(**structure) -> torch.nn.Module:
    s = Structure(**{"conv_channels": [4, 8], "hidden": [16], **structure})
    spec = ModelSpec(structure=s.model_dump(), input_shape=SHAPE, num_classes=3, mean=(100.0,), std=(60.0,))
    return build_model(spec)


@pytest.fixture(scope="module")
def trained() -> torch.nn.Module:
    """The tiny CNN after 200 seeded SGD steps: confident, so agreement is meaningful."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny batches: threads only add overhead (and noise on shared CI)
    try:
        torch.manual_seed(0)
        model = tiny_model()
        x, y = (torch.from_numpy(a) for a in make_data(512, seed=0))
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        for _ in range(200):
            idx = torch.randint(0, len(x), (64,))
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    held_out, labels = make_data(300, seed=1)
    with torch.no_grad():
        assert (model(torch.from_numpy(held_out)).argmax(1).numpy() == labels).mean() > 0.98
    return model


@pytest.fixture(scope="module")
def files(trained, tmp_path_factory) -> dict:
    """fp32 export and its three conversions, made once for the module."""
    d = tmp_path_factory.mktemp("onnx")
    paths = {k: d / f"{k}.onnx" for k in ("fp32", "dynamic", "static", "fp16")}
    ot.export_onnx(trained, SHAPE, paths["fp32"])
    ot.quantize_dynamic_int8(paths["fp32"], paths["dynamic"])
    ot.quantize_static_int8(paths["fp32"], paths["static"], make_data(200, seed=2)[0], batch_size=64)
    ot.convert_fp16(paths["fp32"], paths["fp16"])
    return paths


def ops(path) -> list[str]:
    return [n.op_type for n in onnx.load(path).graph.node]


def test_export_is_valid_with_a_dynamic_batch_and_matches_torch(trained, files):
    model = onnx.load(files["fp32"])
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == 17
    (inp,), (out,) = model.graph.input, model.graph.output
    assert (inp.name, out.name) == (ot.INPUT, ot.OUTPUT)
    assert inp.type.tensor_type.elem_type == out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert inp.type.tensor_type.shape.dim[0].dim_param  # symbolic batch, not a fixed 1
    x, _ = make_data(7, seed=3)
    for batch in (x[:1], x):
        assert ot.fold_check(trained, files["fp32"], batch) < 1e-4
    assert "Identity" not in ops(files["fp32"])


def test_export_is_deterministic_and_leaves_the_model_alone(trained, tmp_path):
    model = tiny_model(batch_norm=True, dropout=0.3)
    model.train()
    with torch.no_grad():  # non-trivial BatchNorm running statistics
        model(torch.from_numpy(make_data(64, seed=4)[0]))
    a, b = tmp_path / "a" / "m.onnx", tmp_path / "b" / "nested" / "m.onnx"  # parents get created
    ot.export_onnx(model, SHAPE, a)
    ot.export_onnx(model, SHAPE, b)
    assert a.read_bytes() == b.read_bytes()
    assert model.training  # export worked on an eval-mode copy
    # BatchNorm folded into Conv (by the exporter) and Linear (by us), the input
    # normalisation into the first conv (by us); dropout gone.
    assert ops(a) == ["Conv", "Relu", "MaxPool", "Conv", "Relu", "MaxPool", "Flatten", "Gemm", "Relu", "Gemm"]
    assert ot.fold_check(model, a, make_data(7, seed=5)[0]) < 1e-4
    assert not list(tmp_path.rglob("*.tmp"))


def test_input_normalisation_folds_into_an_unpadded_first_conv_only(tmp_path):
    torch.manual_seed(0)
    x = make_data(7, seed=6)[0]
    for padding, first in ((0, ["Conv"]), (1, ["Sub", "Div", "Conv"])):
        model = tiny_model(padding=padding).eval()  # mean 100, std 60: far from identity
        ot.export_onnx(model, SHAPE, tmp_path / f"p{padding}.onnx")
        assert ops(tmp_path / f"p{padding}.onnx")[:len(first)] == first  # a padded border must see 0 after Sub/Div
        assert ot.fold_check(model, tmp_path / f"p{padding}.onnx", x) < 1e-4
    graph = onnx.load(tmp_path / "p0.onnx").graph
    assert len(graph.initializer) == len({i for n in graph.node for i in n.input} & {t.name for t in graph.initializer})


@pytest.mark.parametrize("kind", ["dynamic", "static", "fp16"])
def test_conversions_agree_with_fp32_and_are_deterministic(files, kind, tmp_path):
    x, _ = make_data(1000, seed=6)
    ref = ot.predict(files["fp32"], x)
    got = ot.predict(ot.session(files[kind]), x)
    assert got.dtype == np.float32 and got.shape == ref.shape
    assert ot.agreement(ref, got) >= 0.99
    again = tmp_path / "again.onnx"
    if kind == "dynamic":
        ot.quantize_dynamic_int8(files["fp32"], again)
    elif kind == "static":
        ot.quantize_static_int8(files["fp32"], again, make_data(200, seed=2)[0], batch_size=64)
    else:
        ot.convert_fp16(files["fp32"], again)
    assert again.read_bytes() == files[kind].read_bytes()


def test_static_is_qdq_with_float_logits(files):
    names = ops(files["static"])
    assert "QuantizeLinear" in names and "DequantizeLinear" in names
    model = onnx.load(files["static"])
    last = next(n for n in model.graph.node if ot.OUTPUT in n.output)
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
    ot.export_onnx(build_model(spec), (1, 28, 28), fp32)
    ot.quantize_dynamic_int8(fp32, dyn)
    calib = np.random.default_rng(0).uniform(0, 255, (32, 1, 28, 28)).astype(np.float32)
    ot.quantize_static_int8(fp32, static, calib, batch_size=8)
    size = fp32.stat().st_size
    assert dyn.stat().st_size < 0.5 * size and static.stat().st_size < 0.5 * size


def test_predict_batches_and_agreement():
    a = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 3.0], [5.0, 4.0]])
    assert ot.agreement(a, a[:, ::-1]) == 0.0
    assert ot.agreement(a, a * 2) == 1.0
    with pytest.raises(ValueError, match="agreement"):
        ot.agreement(a, a[:3])


def test_predict_is_independent_of_batch_size(files):
    x, _ = make_data(10, seed=7)
    np.testing.assert_allclose(ot.predict(files["fp32"], x, batch_size=3), ot.predict(files["fp32"], x),
                               rtol=1e-5, atol=1e-5)
    assert ot.predict(files["fp32"], x[:0]).shape == (0, 3)
    with pytest.raises(ValueError, match=r"fp32\.onnx takes pixels of shape \(N, 1, 12, 12\)"):
        ot.predict(ot.session(files["fp32"]), x[:, :, :10])
    with pytest.raises(ValueError, match="fp32.onnx"):
        ot.latency_ms(files["fp32"], (1, 28, 28))


def test_timing_helpers_return_sensible_numbers(files):
    for path in (files["fp32"], ot.session(files["static"])):
        lat = ot.latency_ms(path, SHAPE, warmup=2, repeats=20)
        assert set(lat) == {"p50", "p95", "p99", "mean"}
        assert all(math.isfinite(v) and v > 0 for v in lat.values())
        assert lat["p50"] <= lat["p95"] <= lat["p99"]
        tput = ot.throughput(path, SHAPE, batch=32, warmup=1, repeats=3)
        assert math.isfinite(tput) and tput > 0


def test_runtime_floor_is_one_op_on_the_model_input():
    sess = ot.floor_session(SHAPE)
    assert [i.shape for i in sess.get_inputs()] == [["batch", *SHAPE]]
    x = np.random.default_rng(0).uniform(-1, 1, (2, *SHAPE)).astype(np.float32)
    assert np.array_equal(ot.predict(sess, x).reshape(x.shape), np.maximum(x, 0))  # Relu
    assert ot.latency_ms(sess, SHAPE, warmup=2, repeats=20)["p50"] > 0


@pytest.mark.parametrize("content", [None, b"this is not an onnx model"])
def test_missing_or_corrupt_source_is_a_clear_error(tmp_path, content):
    src, dst = tmp_path / "model.onnx", tmp_path / "out" / "q.onnx"
    if content is not None:
        src.write_bytes(content)
    calib = np.zeros((4, *SHAPE), np.float32)
    calls = [lambda: ot.quantize_dynamic_int8(src, dst),
             lambda: ot.quantize_static_int8(src, dst, calib, batch_size=2),
             lambda: ot.convert_fp16(src, dst),
             lambda: ot.session(src),
             lambda: ot.predict(src, calib)]
    for call in calls:
        with pytest.raises(ValueError, match="model.onnx"):
            call()
    assert not dst.exists()


def test_bad_calibration_data_is_rejected(files, tmp_path):
    with pytest.raises(ValueError, match="calibration"):
        ot.quantize_static_int8(files["fp32"], tmp_path / "q.onnx", np.zeros((0, *SHAPE), np.float32), 8)


def test_checked_logits_refuses_an_export_that_does_not_match_torch(tmp_path):
    torch.manual_seed(0)
    model = tiny_model()
    path = tmp_path / "m.onnx"
    ot.export_onnx(model, SHAPE, path)
    x, _ = make_data(7, seed=6)
    np.testing.assert_array_equal(ot.checked_logits(model, path, x), ot.predict(path, x))
    torch.manual_seed(1)
    other = tiny_model()  # different weights: as if the exporter had dropped a layer's
    with pytest.raises(ot.StageError, match="does not match torch"):
        ot.checked_logits(other, path, x)


def test_throughput_makes_fewer_calls_for_a_slow_model(trained, files, monkeypatch):
    """Batch-256 timing adapts its call count to the model's cost: at least 3 timed calls."""
    calls = []
    real = ot.timings

    def counting(sess, shape, batch, warmup, repeats):
        calls.append((warmup, repeats))
        return real(sess, shape, batch, warmup, repeats)

    monkeypatch.setattr(ot, "timings", counting)
    assert ot.throughput(files["fp32"], SHAPE, batch=8) > 0
    assert calls == [(0, 1), (2, 10)]  # a fast model: 3 warm-up calls, 10 timed, as always
    calls.clear()
    ot.throughput(files["fp32"], SHAPE, batch=8, budget_s=1e-9)  # as if one call took the budget
    assert calls == [(0, 1), (1, 3)]
