"""QAT's fake quantization (slimline.compress.qat): the same weights and calibration images
give the numbers of the static int8 file that ORT runs, because the fake quantizers sit
where ORT puts its QuantizeLinear nodes and use ORT's scheme."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from slimline.compress import qat
from slimline.compress.export import export_onnx
from slimline.compress.quantization import quantize_static_int8
from slimline.model import ModelSpec, build_model
from slimline.runtime.onnxruntime import predict
from tests.support.onnx_models import SHAPE, make_data, tiny_model

CALIB, BATCH = make_data(200, seed=2)[0], 64  # what static_files calibrates on (onnx_models.py)


def warmed(model: torch.nn.Module) -> torch.nn.Module:
    """model with BatchNorm statistics of the test data (no training): a conv-BN fold that
    matters, as in a trained model."""
    torch.manual_seed(0)
    model.train()
    with torch.no_grad():
        for i in range(0, 256, 64):
            model(torch.from_numpy(make_data(256, seed=3)[0][i:i + 64]))
    return model.eval()


def fake_quantized(model, fp32):
    fake = qat.prepare(model, torch.from_numpy(CALIB[:2]), fp32)
    qat.calibrate(fake, (CALIB[i:i + BATCH] for i in range(0, len(CALIB), BATCH)))
    return fake


def activation_qparams(int8_path) -> dict[str, tuple[float, int, str]]:
    """{tensor: (scale, zero point, the op that makes it)} for each activation the int8 file
    quantizes."""
    model = onnx.load(int8_path)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    producer = {o: n.op_type for n in model.graph.node for o in n.output}
    return {n.input[0]: (float(inits[n.input[1]]), int(inits[n.input[2]]), producer.get(n.input[0], "input"))
            for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits}


def weight_scales(int8_path) -> list[np.ndarray]:
    """The per-channel scales of the int8 file's quantized weights (int8; biases are int32)."""
    model = onnx.load(int8_path)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return [inits[n.input[1]] for n in model.graph.node if n.op_type == "DequantizeLinear"
            and n.input[0] in inits and inits[n.input[0]].dtype == np.int8]


CASES = {
    # conv -> BatchNorm2d (a simulated fold) and Linear -> BatchNorm1d (fused first, as the
    # export fuses it); the first conv pads nothing, so the export folds the input
    # normalisation into it and the fake quantizer sees raw pixels, as ORT does
    "cnn": lambda: warmed(tiny_model(batch_norm=True)),
    # a padded first conv, a depthwise conv and skip connections (adds)
    "residual": lambda: warmed(build_model(ModelSpec(
        structure={}, input_shape=SHAPE, num_classes=3, mean=(100.0,), std=(60.0,),
        model="python:slimline.examples.tiny_resnet:build", kwargs={"width": 8, "blocks": 2}))),
}


@pytest.mark.parametrize("case", list(CASES))
def test_fake_quantization_computes_what_the_int8_file_does(case, tmp_path):
    model = CASES[case]()
    fp32, int8 = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    export_onnx(model, SHAPE, fp32)
    assert qat.folds_input(fp32) == (case == "cnn")
    quantize_static_int8(fp32, int8, CALIB, BATCH)
    fake = fake_quantized(model, fp32)

    x = make_data(500, seed=4)[0]
    want = predict(int8, x)
    with torch.no_grad():
        got = fake(torch.from_numpy(x)).numpy()
    # One rounding step apart at most here and there (ORT adds in int32, torch in float):
    # a misplaced or missing quantizer, or 8-bit weights, shows as 10-20% of the logits' range.
    assert np.abs(got - want).max() <= 0.03 * np.abs(want).max()
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.99

    # the logits stay float: quantize_static_int8 drops their QuantizeLinear
    (last,) = next(n for n in fake.graph.nodes if n.op == "output").all_input_nodes
    assert last.op == "call_function" and last.target == torch.ops.aten.linear.default

    # the weights: ORT's reduce_range scale, absmax / 64 per output channel, on the weights
    # the file holds (BatchNorm folded in)
    ours = [m.scale.detach().numpy() for m in qat.fake_quantizers(fake).values() if m.dtype == torch.int8]
    theirs = weight_scales(int8)
    assert len(ours) == len(theirs)
    for scale in theirs:
        assert any(s.shape == scale.shape and np.allclose(s, scale, rtol=1e-5) for s in ours)
    for m in qat.fake_quantizers(fake).values():
        if m.dtype == torch.int8:
            assert (m.quant_min, m.quant_max) == (qat.WEIGHT_QMIN, qat.WEIGHT_QMAX) == (-64, 64)

    # the ranges find their way back to the file by value: calibrated alike, each tensor the
    # file quantizes on a scale of its own gets the fake quantizer's scale and zero point,
    # which are the file's (max-pool, flatten and reshape reuse their input's)
    qparams = activation_qparams(int8)
    overrides = qat.tensor_overrides(fake, fp32, qparams, CALIB[:BATCH])
    own = {t for t, (*_, op) in qparams.items() if op not in ("MaxPool", "Flatten", "Reshape")}
    assert own and own <= set(overrides)
    for tensor, [override] in overrides.items():
        scale, zero_point, _ = qparams[tensor]
        assert np.isclose(override["scale"], scale, rtol=1e-5) and int(override["zero_point"]) == zero_point
        # ORT's quantizer takes numpy arrays only, of the file's types
        assert (override["scale"].dtype, override["zero_point"].dtype) == (np.float32, np.uint8)

    # The export: calibrated alike and not trained, the QAT file is the PTQ file, but for
    # scales one ulp apart
    exported = tmp_path / "qat.onnx"
    qat.export_int8(fake, model, fp32, exported, CALIB, BATCH)
    assert np.abs(predict(exported, x) - want).max() <= 0.01 * np.abs(want).max()
    assert qat.quantized_tensors(exported) == qat.quantized_tensors(int8)  # the same Q/DQ placement
    # what training changes reaches the file: a range, and the weights
    name, quantizer = next(iter(qat.activation_quantizers(fake).items()))
    state = fake.state_dict()
    head = [k for k in state if k.endswith(".weight") and state[k].ndim == 2][-1]
    with torch.no_grad():
        quantizer.scale.mul_(1.25)
        state[head].mul_(2.0)
    qat.export_int8(fake, model, fp32, tmp_path / "changed.onnx", CALIB, BATCH)
    before, after = activation_qparams(int8), activation_qparams(tmp_path / "changed.onnx")
    ratios = [after[t][0] / before[t][0] for t in before]
    assert any(np.isclose(r, 1.25) for r in ratios), ratios
    pairs = zip(weight_scales(int8), weight_scales(tmp_path / "changed.onnx"), strict=True)
    changed = [(a, b) for a, b in pairs if not np.allclose(a, b, rtol=1e-5)]
    assert len(changed) == 1 and np.allclose(changed[0][1], 2 * changed[0][0], rtol=1e-5)  # the head's


class HardSwishNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.head = torch.nn.Conv2d(1, 4, 3), torch.nn.Linear(4 * 10 * 10, 3)

    def forward(self, x):
        return self.head(torch.nn.functional.hardswish(self.conv(x)).flatten(1))


def test_hard_swish_is_quantized_as_ort_quantizes_it(tmp_path):
    """ORT's pre-processing inlines HardSwish as x * HardSigmoid(x) and quantizes both factors:
    the fake model computes it that way, with a quantizer on each factor."""
    torch.manual_seed(0)
    net = HardSwishNet().eval()
    export_onnx(net, SHAPE, tmp_path / "fp32.onnx")
    fake = qat.prepare(net, torch.from_numpy(CALIB[:2]), tmp_path / "fp32.onnx")
    targets = [n.target for n in fake.graph.nodes if n.op == "call_function"]
    assert torch.ops.aten.hardswish.default not in targets
    (mul,) = [n for n in fake.graph.nodes if n.target == torch.ops.aten.mul.Tensor]
    assert {a.op for a in mul.args} == {"call_module"}  # both factors through a fake quantizer
    # with the quantizers off it is the same function
    for m in qat.fake_quantizers(fake).values():
        m.disable_fake_quant()
    x = torch.from_numpy(CALIB[:8])
    with torch.no_grad():
        assert torch.allclose(fake(x), net(x), atol=1e-5)
