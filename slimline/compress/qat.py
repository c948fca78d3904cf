"""Fake quantization for quantization-aware training: the quantize stage's static int8,
simulated in torch, so that training sees the numbers the shipped ONNX file computes.

The scheme is ORT's `quantize_static` as slimline/compress/quantization.py calls it:
- weights: int8, symmetric, one scale per output channel, `reduce_range` (ORT 1.32 spans
  [-64, 64]: scale = absmax / 64, zero point 0);
- activations: uint8, one scale and zero point per tensor, from the min and max over the
  calibration images, 0 always inside the range;
- the logits stay float (quantize_static_int8 drops their QuantizeLinear).

torchao's PT2E QAT (`prepare_qat_pt2e`) inserts the fake quantizers; where it puts them is
this module's `OrtInt8Quantizer`, written to match where ORT puts its QuantizeLinear nodes,
not where a library's backend would (docs/design.md, "Quantization-aware training"):
- conv and linear: the input and the weights; the output after the BatchNorm and ReLU that
  the ONNX export and ORT fold into them;
- add and mul: every input and the output (ORT's QDQ Add and Mul);
- hard-swish: x * hardsigmoid(x), the graph ORT quantizes after its pre-processing inlines
  HardSwish; SiLU (swish): x * sigmoid(x), as the ONNX export writes it;
- max-pool, flatten, reshape: pass-through on the input's scale, as ORT requantizes them.

The model is first brought to the structure of its fp32 ONNX file: each Linear ->
BatchNorm1d pair fused (the export fuses them), and the input normalisation folded into
the first conv where the export folds it. `python -m benchmarks.ptq_drop` measures how often
the fake-quantized torch model and ORT's int8 file of the same weights agree.

`export_int8` writes the QAT model as the quantize stage's static int8 file: the trained
weights exported as the fp32 model was, the trained ranges passed to ORT as
`TensorQuantOverrides` (`tensor_overrides`: each fake quantizer matched to the ONNX tensor
that holds the same values, so nothing depends on how torch and the exporter name things).

`fine_tune` trains it with the teacher through training.fit (checkpoints, bit-exact resume).

torchao is imported here only: nothing else in Slimline needs it.
"""
from __future__ import annotations

import copy
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from slimline.params import DistillParams, TrainParams
    from slimline.training.checkpoint import CheckpointStore
    from slimline.training.loop import FitResult

# ORT's reduce_range int8 weights: quant_utils.ONNX_INT_TYPE_REDUCED_RANGE, [-64, 64].
WEIGHT_QMIN, WEIGHT_QMAX = -64, 64
ACT_QMIN, ACT_QMAX = 0, 255


def _pt2e():
    """torchao's PT2E package. Its import makes torch's pytree log a deprecation warning
    (torchao registers an Enum as a pytree constant): not the user's to act on, so it is
    kept out of the stage's log."""
    pytree = logging.getLogger("torch.utils._pytree")
    level = pytree.level
    pytree.setLevel(logging.ERROR)
    try:
        import torchao.quantization.pt2e as pt2e
        import torchao.quantization.pt2e.quantize_pt2e
        import torchao.quantization.pt2e.quantizer  # noqa: F401
    finally:
        pytree.setLevel(level)
    return pt2e


def _specs():
    pt2e = _pt2e()
    FakeQuantize, QuantizationSpec = pt2e.FakeQuantize, pt2e.quantizer.QuantizationSpec
    MinMaxObserver, MovingAveragePerChannelMinMaxObserver = \
        pt2e.MinMaxObserver, pt2e.MovingAveragePerChannelMinMaxObserver

    # Activations: the min and max over every batch seen, as ORT's MinMax calibration.
    act = QuantizationSpec(
        dtype=torch.uint8, quant_min=ACT_QMIN, quant_max=ACT_QMAX, qscheme=torch.per_tensor_affine,
        observer_or_fake_quant_ctr=FakeQuantize.with_args(
            observer=MinMaxObserver, quant_min=ACT_QMIN, quant_max=ACT_QMAX, dtype=torch.uint8,
            qscheme=torch.per_tensor_affine))
    # Weights: each step's scale from the current weights (averaging constant 1), as ORT's
    # comes from the final ones.
    weight = QuantizationSpec(
        dtype=torch.int8, quant_min=WEIGHT_QMIN, quant_max=WEIGHT_QMAX, qscheme=torch.per_channel_symmetric,
        ch_axis=0, observer_or_fake_quant_ctr=FakeQuantize.with_args(
            observer=MovingAveragePerChannelMinMaxObserver.with_args(averaging_constant=1),
            quant_min=WEIGHT_QMIN, quant_max=WEIGHT_QMAX, dtype=torch.int8,
            qscheme=torch.per_channel_symmetric, ch_axis=0))
    return act, weight


def _ops():
    aten = torch.ops.aten
    return {
        "conv": {aten.conv1d.default, aten.conv2d.default},
        "linear": {aten.linear.default},
        "bn": {aten.batch_norm.default, aten._native_batch_norm_legit_no_training.default},
        "relu": {aten.relu.default, aten.relu_.default},
        "add": {aten.add.Tensor, aten.add_.Tensor},
        "mul": {aten.mul.Tensor, aten.mul_.Tensor},
        "hardswish": {aten.hardswish.default, aten.hardswish_.default},
        "silu": {aten.silu.default, aten.silu_.default},
        "passthrough": {aten.max_pool2d.default, aten.flatten.using_ints, aten.view.default,
                        aten.reshape.default, aten.dropout.default},
    }


def _is_tensor(arg) -> bool:
    return isinstance(arg, torch.fx.Node) and isinstance(arg.meta.get("val"), torch.Tensor)


def _quantizer_class():
    quantizer = _pt2e().quantizer
    QuantizationAnnotation, Quantizer, SharedQuantizationSpec = \
        quantizer.QuantizationAnnotation, quantizer.Quantizer, quantizer.SharedQuantizationSpec

    class OrtInt8Quantizer(Quantizer):
        """Fake quantizers where ORT's static int8 puts QuantizeLinear (module doc)."""

        def transform_for_annotation(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            # hardswish(x) -> x * hardsigmoid(x), silu(x) -> x * sigmoid(x): the graphs ORT
            # quantizes (its pre-processing inlines HardSwish; the export writes SiLU so), with
            # a quantizer on each factor of the product
            ops, graph = _ops(), model.graph
            gates = {**dict.fromkeys(ops["hardswish"], torch.ops.aten.hardsigmoid.default),
                     **dict.fromkeys(ops["silu"], torch.ops.aten.sigmoid.default)}
            for node in list(graph.nodes):
                if node.op == "call_function" and node.target in gates:
                    with graph.inserting_before(node):
                        gate = graph.call_function(gates[node.target], (node.args[0],))
                        gate.meta = dict(node.meta)
                        prod = graph.call_function(torch.ops.aten.mul.Tensor, (node.args[0], gate))
                        prod.meta = dict(node.meta)
                    node.replace_all_uses_with(prod)
                    graph.erase_node(node)
            graph.lint()
            model.recompile()
            return model

        def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            act, weight = _specs()
            ops = _ops()
            output = next(n for n in model.graph.nodes if n.op == "output")
            returned = set(output.all_input_nodes)

            def only_user(node, kinds):
                users = list(node.users)
                return users[0] if len(users) == 1 and users[0].op == "call_function" \
                    and users[0].target in kinds else None

            def tail(node):
                """The last node of node's fused group (conv/linear/add [-> bn] [-> relu])."""
                nxt = only_user(node, ops["bn"])
                if nxt is not None:
                    node = nxt
                nxt = only_user(node, ops["relu"])
                return nxt if nxt is not None else node

            def mark(node, inputs):
                node.meta["quantization_annotation"] = QuantizationAnnotation(
                    input_qspec_map=inputs, _annotated=True)
                end = tail(node)
                if end in returned:  # the logits stay float
                    return
                if end is node:
                    node.meta["quantization_annotation"].output_qspec = act
                else:
                    end.meta["quantization_annotation"] = QuantizationAnnotation(
                        output_qspec=act, _annotated=True)

            for node in model.graph.nodes:
                if node.op != "call_function":
                    continue
                if node.target in ops["conv"] | ops["linear"]:
                    mark(node, {node.args[0]: act, node.args[1]: weight})
                elif node.target in ops["add"] | ops["mul"]:
                    inputs = {a: act for a in node.args[:2] if _is_tensor(a)}
                    if len(inputs) == 2:
                        mark(node, inputs)
                elif node.target in ops["passthrough"] and _is_tensor(node.args[0]) \
                        and "quantization_annotation" not in node.meta:
                    src = node.args[0]
                    node.meta["quantization_annotation"] = QuantizationAnnotation(
                        input_qspec_map={src: act}, output_qspec=SharedQuantizationSpec((src, node)),
                        _annotated=True)
            return model

        def validate(self, model: torch.fx.GraphModule) -> None:
            pass

    return OrtInt8Quantizer


def folds_input(onnx_path: str | Path) -> bool:
    """Whether the fp32 ONNX file's first conv reads the raw pixels (the export folded the
    input normalisation into it, or the model has none)."""
    from slimline.compress.onnx_files import INPUT, load

    return any(n.op_type == "Conv" and n.input[0] == INPUT for n in load(onnx_path).graph.node)


def _normalization_folded(conv: nn.Conv2d, mean: torch.Tensor, std: torch.Tensor) -> tuple[np.ndarray, ...]:
    """conv's weights and bias with (x - mean) / std folded in, by the export's own fold
    (slimline/compress/export.py) run on a three-node graph: the same bits as the file."""
    from onnx import TensorProto, helper, numpy_helper

    from slimline.compress.export import _fold_input_normalization
    from slimline.compress.onnx_files import INPUT, OUTPUT

    w = conv.weight.detach().numpy()
    b = conv.bias.detach().numpy() if conv.bias is not None else np.zeros(w.shape[0], np.float32)
    shape = (1, w.shape[1], 1, 1)
    inits = [numpy_helper.from_array(np.broadcast_to(mean.numpy().reshape(-1), w.shape[1:2])
                                     .reshape(shape).astype(np.float32), "mean"),
             numpy_helper.from_array(np.broadcast_to(std.numpy().reshape(-1), w.shape[1:2])
                                     .reshape(shape).astype(np.float32), "std"),
             numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")]
    nodes = [helper.make_node("Sub", [INPUT, "mean"], ["centred"]),
             helper.make_node("Div", ["centred", "std"], ["scaled"]),
             helper.make_node("Conv", ["scaled", "w", "b"], [OUTPUT], kernel_shape=list(w.shape[2:]),
                              strides=list(conv.stride), dilations=list(conv.dilation))]
    graph = helper.make_graph(nodes, "fold", [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, None)], inits)
    proto = helper.make_model(graph)
    _fold_input_normalization(proto)
    (node,) = proto.graph.node
    if node.op_type != "Conv" or node.input[0] != INPUT:
        raise ValueError("the export's fold did not fold this conv")
    folded = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    return folded[node.input[1]], folded[node.input[2]]


def as_exported(model: nn.Module, onnx_path: str | Path) -> nn.Module:
    """A copy with the structure of the model's fp32 ONNX file: each Linear -> BatchNorm1d
    fused, and the input normalisation folded into the first conv when the export folded
    it, so that its weights are quantized as the file's are."""
    from slimline.compress.export import _fuse_linear_bn
    from slimline.model import Normalize

    net = copy.deepcopy(model).cpu().eval()
    _fuse_linear_bn(net)
    leaves = [m for m in net.modules() if not list(m.children())]
    at = next((i for i, m in enumerate(leaves) if isinstance(m, Normalize)), None)
    if at is None or not folds_input(onnx_path):
        return net
    norm, conv = leaves[at], leaves[at + 1] if at + 1 < len(leaves) else None
    if not isinstance(conv, nn.Conv2d) or conv.groups != 1 or any(conv.padding):
        raise ValueError(f"{onnx_path} folds the input normalisation into a conv that does not follow "
                         "the model's Normalize: the fake quantization would not match the file")
    weight, bias = _normalization_folded(conv, norm.mean, norm.std)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(weight.copy()))
        conv.bias = nn.Parameter(torch.from_numpy(bias.copy()))
        norm.mean.zero_()
        norm.std.fill_(1.0)
    return net


def prepare(model: nn.Module, example: torch.Tensor, onnx_path: str | Path) -> torch.fx.GraphModule:
    """The model with ORT's int8 simulated (module doc), in train mode, for any batch size.
    example: a batch of at least 2 raw-pixel inputs; onnx_path: the model's fp32 export."""
    prepare_qat_pt2e = _pt2e().quantize_pt2e.prepare_qat_pt2e
    net = as_exported(model, onnx_path).train()
    batch = torch.export.Dim("batch", min=2)
    graph = torch.export.export(net, (example,), dynamic_shapes=({0: batch},)).module()
    qat = prepare_qat_pt2e(graph, _quantizer_class()())
    _restore_batchnorm_constants(qat, net)
    return qat


def _batchnorms(qat: torch.fx.GraphModule):
    aten = torch.ops.aten
    return [n for n in qat.graph.nodes if n.op == "call_function" and n.target == aten.batch_norm.default]


def _restore_batchnorm_constants(qat: torch.fx.GraphModule, net: nn.Module) -> None:
    """Give each BatchNorm back its own eps and momentum. torchao 0.18's conv-BN fusion
    rewrites the pattern with eps 1e-5 and momentum 0.1 whatever the module had ("TODO:
    allow setting eps", quantization/pt2e/qat_utils.py): torchvision's MobileNets use 1e-3
    and 0.01, and the export folds with the module's own eps."""
    for bn in _batchnorms(qat):
        var = bn.args[4]
        module = net.get_submodule(var.target.rsplit(".", 1)[0])
        # momentum None (a cumulative mean) has no form in the aten op: torch's default
        momentum = 0.1 if module.momentum is None else module.momentum
        bn.args = (*bn.args[:6], momentum, module.eps, *bn.args[8:])
        for user in list(var.users):  # the simulated fold's sqrt(running_var + eps)
            if user.target == torch.ops.aten.add.Tensor and isinstance(user.args[1], float):
                user.args = (user.args[0], module.eps)
    qat.recompile()


def set_training(qat: torch.fx.GraphModule, mode: bool) -> None:
    """train() / eval() for the fake-quantized graph (torch.export graphs refuse the nn.Module
    ones): the training flag of each BatchNorm and dropout, set in place. torchao's
    move_exported_model_to_train/eval would rewrite them from traced patterns, which takes
    about half a second a switch and puts the default eps and momentum back."""
    for bn in _batchnorms(qat):
        bn.args = (*bn.args[:5], mode, *bn.args[6:])
    for node in qat.graph.nodes:
        if node.op == "call_function" and node.target == torch.ops.aten.dropout.default:
            node.args = (node.args[0], node.args[1], mode)
    qat.recompile()


def fake_quantizers(qat: torch.fx.GraphModule) -> dict:
    """{module name: FakeQuantize} of every fake quantizer, weights and activations."""
    fake = _pt2e().FakeQuantize
    return {name: m for name, m in qat.named_modules() if isinstance(m, fake)}


def activation_quantizers(qat: torch.fx.GraphModule) -> dict:
    """The uint8 ones: one per activation tensor that ORT quantizes on its own scale."""
    return {name: m for name, m in fake_quantizers(qat).items() if m.dtype == torch.uint8}


def calibrate(qat: torch.fx.GraphModule, batches: Iterable[np.ndarray]) -> None:
    """Activation ranges from the min and max of the float values over `batches`, as ORT's
    MinMax calibration sees them (no fake quantization upstream), then frozen. Leaves the
    model in eval mode, fake quantization on."""
    set_training(qat, False)
    quantizers, acts = fake_quantizers(qat), activation_quantizers(qat)
    for m in quantizers.values():
        m.disable_fake_quant()
    with torch.no_grad():
        for batch in batches:
            qat(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)))
    for m in quantizers.values():
        m.enable_fake_quant()
    for m in acts.values():
        m.disable_observer()


def _tensor_values(onnx_path: str | Path, x: np.ndarray) -> dict[str, np.ndarray]:
    """Every float tensor of the file as quantize_static sees it (after quant_pre_process,
    which names the tensors it quantizes), computed on x."""
    import tempfile

    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from slimline.compress.onnx_files import INPUT, load

    with tempfile.TemporaryDirectory(prefix="qat.") as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(load(onnx_path), pre)
        model = onnx.load(pre)
    present = {o.name for o in model.graph.output}
    # value_info can outlive the nodes the pre-processing optimised away (an identity
    # normalisation's Sub and Div): only tensors a node still makes can be outputs
    made = {name for node in model.graph.node for name in node.output}
    floats = {v.name for v in model.graph.value_info
              if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT and v.name in made}
    for name in sorted(floats - present):  # quant_pre_process's shape inference typed them
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    values = dict(zip(names, sess.run(names, {INPUT: x}), strict=True))
    return {INPUT: x, **values}


def tensor_overrides(qat: torch.fx.GraphModule, onnx_path: str | Path, quantized: Iterable[str],
                     x: np.ndarray) -> dict[str, list[dict]]:
    """ORT `TensorQuantOverrides` for the file's tensors that static int8 quantizes
    (`quantized`: their names, as quantize_static names them), each with the scale and zero
    point of the fake quantizer that sees the same values: the ranges QAT trained with, for
    the file it exports. Tensors are matched by value on one batch x (fake quantization off),
    so the match needs no names shared between torch and ONNX. A tensor with no match is
    left out: ORT calibrates it. Leaves the model in eval mode (the file's BatchNorm uses its
    running statistics, and a training-mode pass would move them)."""
    set_training(qat, False)
    quantized, acts = set(quantized), activation_quantizers(qat)
    seen: list[tuple[str, np.ndarray]] = []  # a shared quantizer is called at each tensor it serves

    def record(name: str):
        # a copy: a residual's in-place add (`out += identity`) rewrites the quantizer's tensor
        return lambda _, args: seen.append((name, args[0].clone().numpy()))

    hooks = [m.register_forward_pre_hook(record(name)) for name, m in acts.items()]
    fakes = fake_quantizers(qat)
    on = {name: bool(m.fake_quant_enabled[0]) for name, m in fakes.items()}
    try:
        for m in fakes.values():
            m.disable_fake_quant()
        with torch.no_grad():
            qat(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
    finally:
        for h in hooks:
            h.remove()
        for name, m in fakes.items():
            if on[name]:
                m.enable_fake_quant()
    tensors = {k: v for k, v in _tensor_values(onnx_path, x).items() if k in quantized}
    overrides: dict[str, list[dict]] = {}
    for name, value in seen:
        tol = 1e-4 * max(1.0, float(np.abs(value).max()))
        for tensor, other in tensors.items():
            if other.shape == value.shape and np.allclose(other, value, rtol=1e-3, atol=tol):
                m = acts[name]
                # 0-d arrays of the file's types: what ORT's quantizer takes
                overrides[tensor] = [{"scale": np.array(m.scale.item(), np.float32),
                                      "zero_point": np.array(m.zero_point.item(), np.uint8)}]
    return overrides


def trained_copy(qat: torch.fx.GraphModule, model: nn.Module, onnx_path: str | Path) -> nn.Module:
    """The model as exported (`as_exported`) with the QAT model's weights and BatchNorm
    statistics: torch.export keeps the module's state-dict keys."""
    net = as_exported(model, onnx_path)
    state = qat.state_dict()
    net.load_state_dict({key: state[key] for key in net.state_dict()})
    return net.eval()


def quantized_tensors(int8_path: str | Path) -> list[str]:
    """The activations a static int8 (QDQ) file quantizes: the inputs of its QuantizeLinear
    nodes that are not weights."""
    from slimline.compress.onnx_files import load

    model = load(int8_path)
    weights = {t.name for t in model.graph.initializer}
    return [n.input[0] for n in model.graph.node
            if n.op_type == "QuantizeLinear" and n.input[0] not in weights]


def unsimulated(int8_path: str | Path, quantized: Iterable[str], overrides: dict) -> list[str]:
    """The tensors static int8 quantizes (`quantized`, in int8_path) that no fake quantizer
    simulates (no entry in `overrides`), as "<op> <node>" of the node that makes each: ORT
    calibrates their ranges, and QAT trains blind to their rounding. An op the
    OrtInt8Quantizer does not model (a GELU, a softmax, an average pool on its own scale)."""
    from slimline.compress.onnx_files import load

    made = {name: node for node in load(int8_path).graph.node for name in node.output}
    return [f"{made[t].op_type} {made[t].name}" if t in made else f"input {t}"
            for t in quantized if t not in overrides]


def simulation_gaps(qat: torch.fx.GraphModule, onnx_path: str | Path, x: np.ndarray) -> tuple[list[str], int]:
    """(unsimulated(), how many tensors static int8 quantizes) for a freshly prepared model and
    its fp32 export, both calibrated on x: what `slimline check` reports before training."""
    import tempfile

    from slimline.compress.quantization import quantize_static_int8

    with tempfile.TemporaryDirectory(prefix="qat.") as tmp:
        plain = Path(tmp) / "plain.onnx"
        quantize_static_int8(onnx_path, plain, x, len(x))
        calibrate(qat, [x])
        quantized = quantized_tensors(plain)
        return unsimulated(plain, quantized, tensor_overrides(qat, onnx_path, quantized, x)), len(quantized)


def export_int8(qat: torch.fx.GraphModule, model: nn.Module, onnx_path: str | Path, dst: str | Path,
                calib: np.ndarray, batch_size: int) -> list[str]:
    """The QAT model as the quantize stage's static int8 file: its weights exported as the
    fp32 model was (onnx_path: that export), then quantize_static_int8 with the trained
    activation ranges as overrides, so the file differs from a PTQ one only in its numbers.
    A plain quantization first names the tensors ORT quantizes. Returns the ones QAT did not
    simulate (`unsimulated`)."""
    import tempfile

    from slimline.compress.export import export_onnx
    from slimline.compress.quantization import quantize_static_int8

    shape = tuple(calib.shape[1:])
    with tempfile.TemporaryDirectory(prefix="qat.") as tmp:
        fp32, plain = Path(tmp) / "fp32.onnx", Path(tmp) / "plain.onnx"
        export_onnx(trained_copy(qat, model, onnx_path), shape, fp32)
        quantize_static_int8(fp32, plain, calib, batch_size)
        quantized = quantized_tensors(plain)
        overrides = tensor_overrides(qat, fp32, quantized, calib[:batch_size])
        quantize_static_int8(fp32, dst, calib, batch_size, overrides=overrides)
        return unsimulated(plain, quantized, overrides)


class Trainable(nn.Module):
    """The fake-quantized graph as a module `training.fit` can train: its train() and eval()
    switch BatchNorm and dropout with `set_training`."""

    def __init__(self, graph: torch.fx.GraphModule):
        super().__init__()
        self.graph = graph

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.graph(x)

    def train(self, mode: bool = True) -> Trainable:
        set_training(self.graph, mode)
        self.training = mode
        return self


def fine_tune(qat: torch.fx.GraphModule, teacher: nn.Module, data: dict, cfg: TrainParams,
              distill: DistillParams, store: CheckpointStore, on_epoch=None, loader=None) -> FitResult:
    """Quantization-aware training: the calibrated fake-quantized model trained in place on
    data["train"] (validated on data["val"]) with the KD loss from `teacher` (distill's
    temperature and alpha), checkpointed in `store` after each epoch and resumed from it
    bit for bit, as every training is (slimline/training/loop.py). The activation ranges
    stay as calibrated; the weights' scales follow the weights."""
    from slimline.compress.kd import make_kd_loss
    from slimline.training.loop import fit

    return fit(Trainable(qat), data["train"], data["val"], cfg, store,
               loss_fn=make_kd_loss(teacher, distill), on_epoch=on_epoch, desc="qat", loader=loader)


def keep_zeros(qat: torch.fx.GraphModule) -> int:
    """Keep every weight that is exactly zero at zero through training (an unstructured-pruned
    model stays as sparse as it was): its gradient is masked, so neither SGD's nor AdamW's
    step, momentum or weight decay can move it. Returns how many weights are held."""
    held = 0
    for p in qat.parameters():
        if p.dim() < 2:
            continue  # biases and BatchNorm affine: never pruned
        mask = (p.detach() != 0).to(p.dtype)
        zeros = int(mask.numel() - mask.sum().item())
        if zeros:
            p.register_hook(lambda grad, mask=mask: grad * mask.to(grad.device))
            held += zeros
    return held


def best_epoch(history: list[dict]) -> int:
    """The epoch to export: the best val accuracy of the fake-quantized model, the earliest
    among equals (fewer steps away from the calibrated model; epoch 0 is that model)."""
    if not history:
        raise ValueError("no epoch trained")
    best = max(m["val_acc"] for m in history)
    return next(m["epoch"] for m in history if m["val_acc"] == best)
