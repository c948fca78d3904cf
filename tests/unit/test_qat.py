"""QAT's fake quantization (slimline.compress.qat): the same weights and calibration images
give the numbers of the static int8 file that ORT runs, because the fake quantizers sit
where ORT puts its QuantizeLinear nodes and use ORT's scheme."""
from __future__ import annotations

import copy
from types import SimpleNamespace

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


def custom_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """BatchNorm as torchvision's MobileNets have it: eps 1e-3, momentum 0.01."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eps, m.momentum = 1e-3, 0.01
    return model


CASES = {
    # conv -> BatchNorm2d (a simulated fold) and Linear -> BatchNorm1d (fused first, as the
    # export fuses it), with an eps and momentum of their own; the first conv pads nothing,
    # so the export folds the input normalisation into it and the fake quantizer sees raw
    # pixels, as ORT does
    "cnn": lambda: warmed(custom_batchnorm(tiny_model(batch_norm=True))),
    # a padded first conv, a depthwise conv and skip connections (adds)
    "residual": lambda: warmed(build_model(ModelSpec(
        structure={}, input_shape=SHAPE, num_classes=3, mean=(100.0,), std=(60.0,),
        model="python:slimline.examples.tiny_resnet:build", kwargs={"width": 8, "blocks": 2}))),
}


@pytest.fixture(scope="module", params=list(CASES))
def case(request, tmp_path_factory):
    """One model of CASES, its fp32 export, the quantize stage's static int8 of it, and the
    fake-quantized model, calibrated on the same images: made once for the module."""
    model = CASES[request.param]()
    folder = tmp_path_factory.mktemp(request.param)
    fp32, int8 = folder / "fp32.onnx", folder / "int8.onnx"
    export_onnx(model, SHAPE, fp32)
    quantize_static_int8(fp32, int8, CALIB, BATCH)
    return SimpleNamespace(name=request.param, model=model, fp32=fp32, int8=int8,
                           fake=fake_quantized(model, fp32), folder=folder)


X = make_data(500, seed=4)[0]


def test_fake_quantization_computes_what_the_int8_file_does(case):
    assert qat.folds_input(case.fp32) == (case.name == "cnn")
    want = predict(case.int8, X)
    with torch.no_grad():
        got = case.fake(torch.from_numpy(X)).numpy()
    # One rounding step apart here and there (ORT adds in int32, torch in float); a
    # misplaced or missing quantizer shows as a tenth of the logits' range or more.
    assert np.abs(got - want).max() <= 0.03 * np.abs(want).max()
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.99


def test_the_logits_stay_float(case):
    """quantize_static_int8 drops the QuantizeLinear on the logits; so does the fake model."""
    (last,) = next(n for n in case.fake.graph.nodes if n.op == "output").all_input_nodes
    assert last.op == "call_function" and last.target == torch.ops.aten.linear.default


def test_weights_get_the_scales_of_the_file(case):
    """ORT's reduce_range scale, absmax / 64 per output channel, on the weights the file holds
    (BatchNorm folded in)."""
    weights = [m for m in qat.fake_quantizers(case.fake).values() if m.dtype == torch.int8]
    theirs = weight_scales(case.int8)
    assert len(weights) == len(theirs)
    for scale in theirs:
        assert any(m.scale.shape == scale.shape and np.allclose(m.scale.numpy(), scale, rtol=1e-5)
                   for m in weights)
    assert {(m.quant_min, m.quant_max) for m in weights} == {(-64, 64)}  # ORT's reduce_range int8


def test_each_range_maps_by_value_to_the_tensor_the_file_quantizes(case):
    """Calibrated alike, each tensor the file quantizes on a scale of its own gets the fake
    quantizer's scale and zero point, which are the file's (max-pool, flatten and reshape
    reuse their input's)."""
    qparams = activation_qparams(case.int8)
    training = copy.deepcopy(case.fake)
    qat.set_training(training, True)  # matched in eval mode whatever mode training left it in
    overrides = qat.tensor_overrides(training, case.fp32, qparams, CALIB[:BATCH])
    own = {t for t, (*_, op) in qparams.items() if op not in ("MaxPool", "Flatten", "Reshape")}
    assert own and own <= set(overrides)
    for tensor, [override] in overrides.items():
        scale, zero_point, _ = qparams[tensor]
        assert np.isclose(override["scale"], scale, rtol=1e-5) and int(override["zero_point"]) == zero_point
        # ORT's quantizer takes numpy arrays only, of the file's types
        assert (override["scale"].dtype, override["zero_point"].dtype) == (np.float32, np.uint8)


def test_the_export_is_the_ptq_file_until_training_changes_it(case):
    exported = case.folder / "qat.onnx"
    qat.export_int8(case.fake, case.model, case.fp32, exported, CALIB, BATCH)
    # calibrated alike and not trained: the PTQ file, but for scales one ulp apart
    want = predict(case.int8, X)
    assert np.abs(predict(exported, X) - want).max() <= 0.01 * np.abs(want).max()
    assert qat.quantized_tensors(exported) == qat.quantized_tensors(case.int8)  # the same Q/DQ placement
    # what training changes reaches the file: a range, and the weights
    trained = copy.deepcopy(case.fake)
    quantizer = next(iter(qat.activation_quantizers(trained).values()))
    state = trained.state_dict()
    head = [k for k in state if k.endswith(".weight") and state[k].ndim == 2][-1]
    with torch.no_grad():
        quantizer.scale.mul_(1.25)
        state[head].mul_(2.0)
    changed = case.folder / "changed.onnx"
    qat.export_int8(trained, case.model, case.fp32, changed, CALIB, BATCH)
    before, after = activation_qparams(case.int8), activation_qparams(changed)
    ratios = [after[t][0] / before[t][0] for t in before]
    assert any(np.isclose(r, 1.25) for r in ratios), ratios
    pairs = zip(weight_scales(case.int8), weight_scales(changed), strict=True)
    moved = [(a, b) for a, b in pairs if not np.allclose(a, b, rtol=1e-5)]
    assert len(moved) == 1 and np.allclose(moved[0][1], 2 * moved[0][0], rtol=1e-5)  # the head's


class GatedNet(torch.nn.Module):
    """conv, then an activation, then a linear head."""

    def __init__(self, act):
        super().__init__()
        self.act = act
        self.conv, self.head = torch.nn.Conv2d(1, 4, 3), torch.nn.Linear(4 * 10 * 10, 3)

    def forward(self, x):
        return self.head(self.act(self.conv(x)).flatten(1))


@pytest.mark.parametrize("act, op", [(torch.nn.functional.hardswish, torch.ops.aten.hardswish.default),
                                     (torch.nn.functional.silu, torch.ops.aten.silu.default)],
                         ids=["hardswish", "silu"])
def test_gated_activations_are_quantized_as_ort_quantizes_them(tmp_path, act, op):
    """ORT's pre-processing inlines HardSwish as x * HardSigmoid(x), the export writes SiLU
    as x * Sigmoid(x), and ORT quantizes both factors: the fake model computes them that way,
    with a quantizer on each factor, and simulates every tensor the file quantizes."""
    torch.manual_seed(0)
    net = GatedNet(act).eval()
    export_onnx(net, SHAPE, tmp_path / "fp32.onnx")
    fake = qat.prepare(net, torch.from_numpy(CALIB[:2]), tmp_path / "fp32.onnx")
    targets = [n.target for n in fake.graph.nodes if n.op == "call_function"]
    assert op not in targets
    (mul,) = [n for n in fake.graph.nodes if n.target == torch.ops.aten.mul.Tensor]
    assert {a.op for a in mul.args} == {"call_module"}  # both factors through a fake quantizer
    # with the quantizers off it is the same function
    for m in qat.fake_quantizers(fake).values():
        m.disable_fake_quant()
    x = torch.from_numpy(CALIB[:8])
    with torch.no_grad():
        assert torch.allclose(fake(x), net(x), atol=1e-5)
    for m in qat.fake_quantizers(fake).values():
        m.enable_fake_quant()
    assert qat.simulation_gaps(fake, tmp_path / "fp32.onnx", CALIB[:BATCH])[0] == []


class InPlaceResidual(torch.nn.Module):
    """torchvision's BasicBlock: conv -> BatchNorm, the input added in place, then ReLU."""

    def __init__(self, tail=None):
        super().__init__()
        self.tail = tail or torch.nn.Identity()
        self.stem, self.conv = torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Conv2d(4, 4, 3, padding=1)
        self.bn, self.head = torch.nn.BatchNorm2d(4), torch.nn.Linear(4, 3)

    def forward(self, x):
        identity = torch.relu(self.stem(x))
        out = self.bn(self.conv(identity))
        out += identity
        return self.head(self.tail(torch.relu(out)).mean((2, 3)))


def test_simulation_gaps_name_the_ops_the_fake_quantization_does_not_model(tmp_path):
    """A sigmoid on its own is not simulated, and is named; every other tensor is, the
    residual's in-place add included (its input is matched before the add rewrites it)."""
    torch.manual_seed(0)
    net = warmed(InPlaceResidual(torch.nn.Sigmoid()))
    export_onnx(net, SHAPE, tmp_path / "fp32.onnx")
    fake = qat.prepare(net, torch.from_numpy(CALIB[:2]), tmp_path / "fp32.onnx")
    assert qat.simulation_gaps(fake, tmp_path / "fp32.onnx", CALIB[:BATCH]) == (["Sigmoid /tail/Sigmoid"], 6)


class Interrupted(Exception):
    pass


def test_fine_tuning_with_the_teacher_resumes_bit_for_bit(case, tmp_path):
    """Trained twice from the same calibrated model, once straight through and once stopped
    after its first epoch's checkpoint and resumed in a fresh model: the same bits."""
    from slimline.params import DistillParams, TrainParams
    from slimline.training.checkpoint import CheckpointStore

    train, val = make_data(192, seed=5), make_data(64, seed=6)
    data = {"train": tuple(map(torch.from_numpy, train)), "val": tuple(map(torch.from_numpy, val))}
    cfg = TrainParams(epochs=2, batch_size=32, lr=0.01, num_threads=1)
    teacher, distill = copy.deepcopy(case.model), DistillParams()
    teacher_before = copy.deepcopy(teacher.state_dict())

    straight = copy.deepcopy(case.fake)
    history = qat.fine_tune(straight, teacher, data, cfg, distill, CheckpointStore(tmp_path / "a")).history
    assert [h["epoch"] for h in history] == [1, 2]

    def stop(metrics):
        if metrics["epoch"] == 1:
            raise Interrupted

    store = CheckpointStore(tmp_path / "b")
    with pytest.raises(Interrupted):
        qat.fine_tune(copy.deepcopy(case.fake), teacher, data, cfg, distill, store, stop)
    resumed = copy.deepcopy(case.fake)  # as a new process builds it
    result = qat.fine_tune(resumed, teacher, data, cfg, distill, store)
    assert result.resumed_from == 1

    before, a, b = case.fake.state_dict(), straight.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    weights = [k for k in a if k.endswith(".weight")]
    assert any(not torch.equal(a[k], before[k]) for k in weights)  # it trained
    for name, m in qat.activation_quantizers(straight).items():  # the ranges stayed as calibrated
        assert torch.equal(m.scale, qat.activation_quantizers(case.fake)[name].scale)
    # the teacher's weights never move
    assert all(torch.equal(v, teacher_before[k]) for k, v in teacher.state_dict().items())


def test_pruned_weights_stay_zero_through_fine_tuning(case, tmp_path):
    """An unstructured-pruned model's zeros are held (keep_zeros), under SGD with momentum and
    weight decay; every other weight trains."""
    from slimline.params import DistillParams, TrainParams
    from slimline.training.checkpoint import CheckpointStore

    fake = copy.deepcopy(case.fake)
    weights = [p for p in fake.parameters() if p.dim() >= 2]
    with torch.no_grad():
        for p in weights:
            p.view(-1)[::2] = 0  # half of every weight tensor pruned
    zero = [p.detach() == 0 for p in weights]
    assert qat.keep_zeros(fake) == sum(int(z.sum()) for z in zero)
    before = [p.detach().clone() for p in weights]
    data = {"train": tuple(map(torch.from_numpy, make_data(96, seed=5))),
            "val": tuple(map(torch.from_numpy, make_data(32, seed=6)))}
    cfg = TrainParams(epochs=1, batch_size=32, lr=0.05, num_threads=1)
    qat.fine_tune(fake, copy.deepcopy(case.model), data, cfg, DistillParams(), CheckpointStore(tmp_path))
    for p, z, b in zip(weights, zero, before, strict=True):
        assert torch.all(p[z] == 0)
        assert not torch.equal(p[~z], b[~z])


def test_the_best_val_epoch_is_exported_the_earliest_among_equals():
    history = [{"epoch": 0, "val_acc": 0.9}, {"epoch": 1, "val_acc": 0.95}, {"epoch": 2, "val_acc": 0.95}]
    assert qat.best_epoch(history) == 1
    assert qat.best_epoch(history[:1]) == 0


def test_batchnorm_keeps_its_own_eps_and_momentum(case):
    """torchao's conv-BN fusion writes eps 1e-5 and momentum 0.1 into the graph; the cnn
    case's BatchNorms have torchvision MobileNet's 1e-3 and 0.01, which the export folds with."""
    batchnorms = [m for m in case.model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    own = {(m.momentum, m.eps) for m in batchnorms}
    assert own == ({(0.01, 1e-3)} if case.name == "cnn" else {(0.1, 1e-5)})
    fake = copy.deepcopy(case.fake)
    for mode in (True, False):
        qat.set_training(fake, mode)
        bns = [n for n in fake.graph.nodes if n.target == torch.ops.aten.batch_norm.default]
        assert bns and {n.args[5:8] for n in bns} == {(mode, *pair) for pair in own}
