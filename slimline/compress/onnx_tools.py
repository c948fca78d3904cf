"""ONNX export, ONNX Runtime int8/fp16 conversions, and fair CPU timing.

Every model file takes raw float32 pixels (N, C, H, W) as INPUT and returns
float32 logits (N, K) as OUTPUT, whatever its internal precision, so callers
feed the same arrays to every variant. Files pass onnx.checker before they are
written (atomically), and identical inputs give identical bytes (DVC hashes them).
"""
from __future__ import annotations

import contextlib
import copy
import io
import math
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import helper, numpy_helper
from torch import nn
from torch.nn.utils.fusion import fuse_linear_bn_eval

from slimline.errors import StageError
from slimline.io import atomic_write_bytes

INPUT, OUTPUT = "pixels", "logits"


class OnnxFileError(StageError, ValueError):
    """A source ONNX file is missing, unreadable or not a valid model."""


@contextlib.contextmanager
def _step(what: str):
    """Re-raise a library failure as one RuntimeError that names the step and file."""
    try:
        yield
    except OnnxFileError:
        raise
    except Exception as err:
        raise RuntimeError(f"{what} failed: {err}") from err


def _load(path: str | Path) -> onnx.ModelProto:
    path = Path(path)
    if not path.is_file():
        raise OnnxFileError(f"{path}: ONNX model not found (run the export step first)")
    try:
        model = onnx.load_from_string(path.read_bytes())
        onnx.checker.check_model(model)
    except Exception as err:  # protobuf DecodeError, ValidationError, ...
        raise OnnxFileError(f"{path} is not a valid ONNX model ({err}); delete it and re-export") from err
    return model


def _save(model: onnx.ModelProto, path: str | Path) -> None:
    with _step(f"checking the model for {path} (not written)"):
        onnx.checker.check_model(model, full_check=True)
    atomic_write_bytes(path, model.SerializeToString())  # creates the parent folder


def _prune(model: onnx.ModelProto) -> None:
    """Drop initializers no node reads (ORT warns about each one at load)."""
    used = {i for n in model.graph.node for i in n.input}
    keep = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)


def _fuse_linear_bn(net: nn.Module) -> None:
    """Fold each Linear -> BatchNorm1d pair into one Linear (eval mode). The
    exporter already folds Conv -> BatchNorm2d; this saves the head's BN op and
    keeps it away from the int8 quantizers, which have no good BN kernel."""
    for seq in [m for m in net.modules() if isinstance(m, nn.Sequential)]:
        for i in range(len(seq) - 1):
            if isinstance(seq[i], nn.Linear) and isinstance(seq[i + 1], nn.BatchNorm1d):
                seq[i], seq[i + 1] = fuse_linear_bn_eval(seq[i], seq[i + 1]), nn.Identity()


def _drop_identities(model: onnx.ModelProto) -> None:
    """The TorchScript exporter shares equal tensors through Identity nodes;
    let their readers use the initializer directly."""
    inits, outputs = {t.name for t in model.graph.initializer}, {o.name for o in model.graph.output}
    alias = {n.output[0]: n.input[0] for n in model.graph.node
             if n.op_type == "Identity" and n.input[0] in inits and n.output[0] not in outputs}
    keep = [n for n in model.graph.node if n.output[0] not in alias]
    for node in keep:
        node.input[:] = [alias.get(name, name) for name in node.input]
    del model.graph.node[:]
    model.graph.node.extend(keep)


def _fold_input_normalization(model: onnx.ModelProto) -> None:
    """Sub(x, mean) -> Div(std) -> Conv(W, b) on the graph input becomes Conv(W/std, b')
    when the conv pads nothing (a padded border would see -mean/std, not 0) and is not
    grouped: two whole-image ops fewer per call, which at batch 1 on a small model is a
    visible share of the latency. b' = b - sum(W/std * mean), summed exactly (fsum of
    float64 products of float32s), so every CPU gets the same bits."""
    inits = {t.name: t for t in model.graph.initializer}
    readers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)

    def only_reader(name: str, op: str):
        found = readers.get(name, [])
        return found[0] if len(found) == 1 and found[0].op_type == op else None

    outputs = {o.name for o in model.graph.output}
    sub = only_reader(INPUT, "Sub")
    div = sub and sub.input[0] == INPUT and sub.input[1] in inits and only_reader(sub.output[0], "Div")
    conv = div and div.input[0] == sub.output[0] and div.input[1] in inits and only_reader(div.output[0], "Conv")
    if not conv or conv.input[0] != div.output[0] or conv.input[1] not in inits \
            or (len(conv.input) > 2 and conv.input[2] not in inits) \
            or {sub.output[0], div.output[0]} & outputs:
        return
    attrs = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
    if any(attrs.get("pads", [0])) or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID") \
            or attrs.get("group", 1) != 1:
        return
    w = numpy_helper.to_array(inits[conv.input[1]])
    if w.ndim != 4:
        return
    channels = w.shape[1]
    mean, std = (numpy_helper.to_array(inits[n]).astype(np.float32) for n in (sub.input[1], div.input[1]))
    # Per channel means shape (1, C, 1, 1) or (C, 1, 1) (or one value): a (C,) would
    # broadcast along the image width instead.
    if not all(a.size == 1 or (a.size == channels and a.shape[-3:] == (channels, 1, 1)) for a in (mean, std)):
        return
    mean, std = (np.broadcast_to(a.reshape(-1), (channels,)) for a in (mean, std))
    folded = (w / std[None, :, None, None]).astype(np.float32)
    b = numpy_helper.to_array(inits[conv.input[2]]) if len(conv.input) > 2 else np.zeros(w.shape[0], np.float32)
    shift = [math.fsum((folded[o].astype(np.float64) * mean[:, None, None].astype(np.float64)).ravel())
             for o in range(w.shape[0])]
    bias = np.array([float(b[o]) - shift[o] for o in range(w.shape[0])], dtype=np.float32)

    # The conv's own tensors take the folded values under their names, unless another node
    # shares them: then the fold gets new ones.
    def mine(name: str) -> bool:
        return len(readers.get(name, [])) == 1

    wname = conv.input[1] if mine(conv.input[1]) else f"{conv.input[1]}_normalized"
    bname = conv.input[2] if len(conv.input) > 2 and mine(conv.input[2]) else f"{conv.input[1]}_folded_bias"
    if wname != conv.input[1] and wname in inits or bname not in conv.input and bname in inits:
        return  # a name the fold would take is in use
    kept = [t for t in model.graph.initializer if t.name not in (wname, bname)]
    del model.graph.initializer[:]
    model.graph.initializer.extend([*kept, numpy_helper.from_array(folded, wname), numpy_helper.from_array(bias, bname)])
    conv.input[:] = [INPUT, wname, bname]
    keep = [n for n in model.graph.node if n is not sub and n is not div]
    del model.graph.node[:]
    model.graph.node.extend(keep)
    _prune(model)


def export_onnx(model: nn.Module, input_shape: tuple[int, int, int], path: str | Path,
                opset: int = 17) -> None:
    """fp32 export with a dynamic batch dimension.

    The TorchScript exporter (dynamo=False), on purpose: for these Sequential
    CNNs it gives the same minimal graph as the dynamo exporter, 20-80x faster,
    natively at opset 17, without onnxscript, and without the dynamo exporter's
    per-node metadata, which embeds absolute source paths and line numbers (the
    bytes would change with the checkout folder or a comment in slimline/model.py).
    """
    net = copy.deepcopy(model).cpu().eval()  # the caller's module (device, train flag) is untouched
    _fuse_linear_bn(net)
    buf = io.BytesIO()
    with _step(f"ONNX export to {path}"), warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", DeprecationWarning)  # "legacy TorchScript-based export"
        torch.onnx.export(net, (torch.zeros(1, *input_shape),), buf, dynamo=False,
                          input_names=[INPUT], output_names=[OUTPUT],
                          dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
                          opset_version=opset, do_constant_folding=True,
                          training=torch.onnx.TrainingMode.EVAL)
    proto = onnx.load_from_string(buf.getvalue())
    _drop_identities(proto)
    _fold_input_normalization(proto)
    _save(proto, path)


def _gemm_to_matmul(model: onnx.ModelProto) -> None:
    """Gemm(x, W, b) -> Add(MatMul(x, W^T), b): ORT's dynamic quantizer handles
    MatMul but not Gemm, and the Linear layers hold most of the weights. ORT
    fuses the quantized result into DynamicQuantizeMatMul when it loads it."""
    inits = {t.name: t for t in model.graph.initializer}
    nodes = []
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (node.op_type != "Gemm" or node.input[1] not in inits or attrs.get("transA", 0)
                or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0):
            nodes.append(node)
            continue
        w = numpy_helper.to_array(inits[node.input[1]])
        weight, out, bias = f"{node.input[1]}_kn", node.output[0], node.input[2:3]
        model.graph.initializer.append(numpy_helper.from_array(
            np.ascontiguousarray(w.T if attrs.get("transB", 0) else w), weight))
        mm_out = f"{out}_mm" if bias and bias[0] else out
        nodes.append(helper.make_node("MatMul", [node.input[0], weight], [mm_out], f"{node.name}_mm"))
        if mm_out != out:
            nodes.append(helper.make_node("Add", [mm_out, bias[0]], [out], f"{node.name}_bias"))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    _prune(model)


def quantize_dynamic_int8(src: str | Path, dst: str | Path) -> None:
    """int8 per-channel weights for the Linear layers, activations quantized
    per call. Convs stay fp32: ORT's dynamic Conv (ConvInteger) is slower than
    its fp32 Conv on CPU, and conv kernels are a small share of the weights."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model = _load(src)
    with tempfile.TemporaryDirectory(prefix="onnx_tools.") as tmp, \
            _step(f"dynamic int8 quantization of {src}"):
        pre, out = Path(tmp) / "pre.onnx", Path(tmp) / "q.onnx"
        quant_pre_process(model, pre)  # before the rewrite: its optimiser would re-fuse MatMul+Add
        model = onnx.load(pre)
        _gemm_to_matmul(model)
        quantize_dynamic(model, out, op_types_to_quantize=["MatMul"], per_channel=True,
                         weight_type=QuantType.QInt8)
        result = onnx.load(out)
    _save(result, dst)


def _float_logits(model: onnx.ModelProto) -> None:
    """Drop the QuantizeLinear -> DequantizeLinear pair on OUTPUT: 8-bit logits
    only add near-ties, and ORT's QGemm emits float output directly."""
    producer = {o: n for n in model.graph.node for o in n.output}
    dq = producer.get(OUTPUT)
    q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
    if q is None or q.op_type != "QuantizeLinear" or q.input[0] not in producer:
        return
    last, old = producer[q.input[0]], q.input[0]
    last.output[list(last.output).index(old)] = OUTPUT
    for node in (q, dq):
        model.graph.node.remove(node)
    infos = [v for v in model.graph.value_info if v.name != old]
    del model.graph.value_info[:]
    model.graph.value_info.extend(infos)
    _prune(model)


def quantize_static_int8(src: str | Path, dst: str | Path, calib: np.ndarray, batch_size: int,
                         fp32_nodes: list[str] | tuple = ()) -> None:
    """QDQ int8 with activation ranges from min/max calibration on `calib`.

    Weights: int8, symmetric, one scale per output channel (small filters keep
    their precision). Activations: uint8, asymmetric: after ReLU they are
    non-negative, so uint8 uses all 256 levels where int8 would waste half, the
    ReLU folds into the zero point, and U8S8 is ORT's recommended x86 pairing.
    reduce_range (7-bit weights) is on: x86 CPUs without VNNI add u8 x s8 products
    in pairs into int16, which saturates with 8-bit weights, so the same file
    predicted differently there (the default pipeline's pruned model: top-1
    agreement with fp32 0.978 on an AVX2 CPU, 0.997 on a VNNI one; 0.999 with 7-bit
    weights on the AVX2 CPU). With 7 bits no pair can saturate, on any x86 CPU
    (docs/numerics.md).

    fp32_nodes: names of nodes (as quant_pre_process names them, the names
    static_int8_nodes returns) that stay in fp32: the accuracy-aware loop keeps the
    ones that hurt accuracy most out of int8.
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    calib = np.ascontiguousarray(calib, dtype=np.float32)
    if calib.ndim != 4 or len(calib) == 0 or batch_size < 1:
        raise ValueError(f"calibration for {src} needs a non-empty (N, C, H, W) array and "
                         f"batch_size >= 1, got shape {calib.shape} and batch_size {batch_size}")

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.starts = iter(range(0, len(calib), batch_size))

        def get_next(self):
            start = next(self.starts, None)
            return None if start is None else {INPUT: calib[start:start + batch_size]}

    model = _load(src)
    with tempfile.TemporaryDirectory(prefix="onnx_tools.") as tmp, \
            _step(f"static int8 quantization of {src}"):
        pre, out = Path(tmp) / "pre.onnx", Path(tmp) / "q.onnx"
        quant_pre_process(model, pre)  # shape inference + basic graph optimisation
        quantize_static(pre, out, Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, reduce_range=True,
                        nodes_to_exclude=list(fp32_nodes))
        result = onnx.load(out)
        _float_logits(result)
    _save(result, dst)


def node_ops(path: str | Path) -> list[tuple[str, str]]:
    """(name, op type) of every node, in graph order."""
    return [(n.name, n.op_type) for n in _load(path).graph.node]


def static_int8_nodes(path: str | Path) -> list[str]:
    """The nodes of a static int8 (QDQ) model that hold int8 weights (a DequantizeLinear of
    an initializer feeds them), in graph order: the convs and matmuls where the precision
    goes. Their names are the ones quantize_static_int8's fp32_nodes takes (the quantizer
    keeps node names); a node kept in fp32 keeps fp32 weights and is not listed."""
    model = _load(path)
    inits = {t.name for t in model.graph.initializer}
    int8_weights = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits}
    return [n.name for n in model.graph.node
            if n.op_type not in ("QuantizeLinear", "DequantizeLinear") and int8_weights & set(n.input)]


def convert_fp16(src: str | Path, dst: str | Path) -> None:
    """fp16 weights and activations; float32 INPUT/OUTPUT through Casts at the edges."""
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = _load(src)
    with _step(f"fp16 conversion of {src}"):
        result = convert_float_to_float16(model, keep_io_types=True)
        OnnxModel(result).topological_sort()  # the output Cast comes last; the checker wants order
    _save(result, dst)


def _options(threads: int) -> ort.SessionOptions:
    """The same options for every model, so that timings compare like with like."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return opts


def session(path: str | Path, threads: int = 1) -> ort.InferenceSession:
    path = Path(path)
    if not path.is_file():
        raise OnnxFileError(f"{path}: ONNX model not found")
    try:
        return ort.InferenceSession(str(path), _options(threads), providers=["CPUExecutionProvider"])
    except Exception as err:
        raise OnnxFileError(f"ONNX Runtime cannot load {path}: {err}") from err


def floor_session(input_shape: tuple, threads: int = 1, opset: int = 17) -> ort.InferenceSession:
    """The runtime floor: a one-op graph (Relu, which reads and writes every pixel) on the
    models' input, under the same options as every model. Its p50 is the least a sess.run
    call costs here, so a model close to it has no latency left to win by shrinking."""
    dims = ["batch", *input_shape]
    graph = helper.make_graph(
        [helper.make_node("Relu", [INPUT], [OUTPUT], "floor")], "runtime_floor",
        [helper.make_tensor_value_info(INPUT, onnx.TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info(OUTPUT, onnx.TensorProto.FLOAT, dims)])
    # IR 8 goes with opset 17: pinned, so a newer onnx package cannot outrun the runtime
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    return ort.InferenceSession(model.SerializeToString(), _options(threads),
                                providers=["CPUExecutionProvider"])


def _session(sess_or_path, shape: tuple) -> ort.InferenceSession:
    """A session for sess_or_path that accepts pixels of `shape` (N, C, H, W)."""
    sess = sess_or_path if isinstance(sess_or_path, ort.InferenceSession) else session(sess_or_path)
    want = sess.get_inputs()[0].shape[1:]
    if len(shape) != 4 or any(isinstance(w, int) and w != g for w, g in zip(want, shape[1:])):
        name = getattr(sess, "_model_path", None) or sess_or_path
        raise ValueError(f"{name} takes pixels of shape (N, {', '.join(map(str, want))}), got {tuple(shape)}")
    return sess


def predict(sess_or_path, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Logits (N, K) float32 for raw pixels x (N, C, H, W)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    sess = _session(sess_or_path, x.shape)
    outs = [sess.run([OUTPUT], {INPUT: x[i:i + batch_size]})[0] for i in range(0, len(x), batch_size)]
    if not outs:
        return np.zeros((0, sess.get_outputs()[0].shape[1]), np.float32)
    return np.concatenate(outs).astype(np.float32, copy=False)


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of rows whose argmax (top-1 class) is the same in both logit arrays."""
    if a.shape != b.shape or a.ndim != 2 or len(a) == 0:
        raise ValueError(f"agreement needs two non-empty (N, K) logit arrays, got {a.shape} and {b.shape}")
    return float(np.mean(a.argmax(1) == b.argmax(1)))


def timings(sess_or_path, input_shape, batch: int, warmup: int, repeats: int) -> np.ndarray:
    """Seconds per sess.run call, `repeats` of them after `warmup` untimed ones."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    sess = _session(sess_or_path, (batch, *input_shape))
    # A fixed seeded input and a feed built once: only sess.run is inside the timer.
    feed = {INPUT: np.random.default_rng(0).uniform(0, 255, (batch, *input_shape)).astype(np.float32)}
    for _ in range(warmup):
        sess.run([OUTPUT], feed)
    times = np.empty(repeats)
    for i in range(repeats):
        t0 = time.perf_counter()
        sess.run([OUTPUT], feed)
        times[i] = time.perf_counter() - t0
    return times


def latency_ms(sess_or_path, input_shape, batch: int = 1, warmup: int = 20, repeats: int = 200) -> dict:
    """Milliseconds per sess.run call: {"p50", "p95", "p99", "mean"}."""
    t = timings(sess_or_path, input_shape, batch, warmup, repeats) * 1e3
    p50, p95, p99 = np.percentile(t, [50, 95, 99])
    return {"p50": float(p50), "p95": float(p95), "p99": float(p99), "mean": float(t.mean())}


def throughput(sess_or_path, input_shape, batch: int = 256, warmup: int = 3, repeats: int = 10,
               budget_s: float = 3.0) -> float:
    """Images per second at the median call time (robust to one stray slow call). A model
    whose batch takes long gets fewer calls (at least 3 timed), so that measuring it stays
    within about budget_s: a big model must not make evaluate take minutes."""
    sess = _session(sess_or_path, (batch, *input_shape))
    probe = float(timings(sess, input_shape, batch, 0, 1)[0])  # also the first warm-up call
    repeats = max(3, min(repeats, int(budget_s / max(probe, 1e-9))))
    warmup = min(max(warmup - 1, 0), repeats // 3)
    return float(batch / np.median(timings(sess, input_shape, batch, warmup, repeats)))


def _torch_and_onnx_logits(model: nn.Module, path: str | Path, x) -> tuple[np.ndarray, np.ndarray]:
    net = copy.deepcopy(model).cpu().eval()
    x = np.ascontiguousarray(x.detach().cpu().numpy() if torch.is_tensor(x) else x, dtype=np.float32)
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    got = predict(path, x)
    if ref.shape != got.shape:
        raise ValueError(f"{path} gives logits of shape {got.shape}, the torch model {ref.shape}")
    return ref, got


def fold_check(model: nn.Module, path: str | Path, x) -> float:
    """Largest |torch logits - ORT logits| over x (array or tensor of raw pixels)."""
    ref, got = _torch_and_onnx_logits(model, path, x)
    return float(np.max(np.abs(ref - got))) if ref.size else 0.0


def checked_logits(model: nn.Module, path: str | Path, x, tol: float = 1e-3) -> np.ndarray:
    """The exported model's logits on x, once they are shown to match the torch model's:
    the same top-1 everywhere and no logit further than `tol` (a mismatch is an exporter bug)."""
    ref, got = _torch_and_onnx_logits(model, path, x)
    diff = float(np.max(np.abs(ref - got))) if ref.size else 0.0
    if agreement(got, ref) < 1.0 or diff > tol:
        raise StageError(f"ONNX export {Path(path).name} does not match torch (max |diff| {diff:.2e}); "
                         f"this is an exporter bug, not a data problem: report it")
    return got
