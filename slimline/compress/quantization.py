"""ONNX Runtime int8 (dynamic, static QDQ) and fp16 conversions of an fp32 ONNX file.

Each takes the fp32 export and writes a file with the same float32 INPUT and OUTPUT, so
callers feed the same arrays to every variant; identical inputs give identical bytes.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from slimline.compress.onnx_files import INPUT, OUTPUT, drop_unused_initializers, failing_step, load, save
from slimline.errors import StageError


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
    drop_unused_initializers(model)


def quantize_dynamic_int8(src: str | Path, dst: str | Path) -> None:
    """int8 per-channel weights for the Linear layers, activations quantized
    per call. Convs stay fp32: ORT's dynamic Conv (ConvInteger) is slower than
    its fp32 Conv on CPU, and conv kernels are a small share of the weights."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model = load(src)
    with tempfile.TemporaryDirectory(prefix="quantization.") as tmp, \
            failing_step(f"dynamic int8 quantization of {src}"):
        pre, out = Path(tmp) / "pre.onnx", Path(tmp) / "q.onnx"
        quant_pre_process(model, pre)  # before the rewrite: its optimiser would re-fuse MatMul+Add
        model = onnx.load(pre)
        _gemm_to_matmul(model)
        quantize_dynamic(model, out, op_types_to_quantize=["MatMul"], per_channel=True,
                         weight_type=QuantType.QInt8)
        result = onnx.load(out)
    save(result, dst)


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
    drop_unused_initializers(model)


def calibration_set(prep, cfg) -> np.ndarray:
    """The images that calibrate static int8 (and QAT's ranges): a fixed, spread-out sample of the
    train split, quantize.calibration_batches x calibration_batch_size of them, as float32."""
    x = prep.splits["train"][0]
    need = cfg.calibration_batches * cfg.calibration_batch_size
    if need > len(x):
        raise StageError(f"quantize.calibration_batches x calibration_batch_size = {need} images, but "
                         f"the train split has {len(x)}; lower them")
    order = np.random.default_rng(0).permutation(len(x))[:need]  # a fixed, spread-out sample
    return x[np.sort(order)].astype(np.float32)


def quantize_static_int8(src: str | Path, dst: str | Path, calib: np.ndarray, batch_size: int,
                         fp32_nodes: list[str] | tuple = (), overrides: dict | None = None) -> None:
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

    overrides: ORT's TensorQuantOverrides ({tensor: [{"scale", "zero_point"}]}), ranges that
    replace the calibrated ones: quantization-aware training's (slimline/compress/qat.py).
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

    model = load(src)
    with tempfile.TemporaryDirectory(prefix="quantization.") as tmp, \
            failing_step(f"static int8 quantization of {src}"):
        pre, out = Path(tmp) / "pre.onnx", Path(tmp) / "q.onnx"
        quant_pre_process(model, pre)  # shape inference + basic graph optimisation
        quantize_static(pre, out, Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, reduce_range=True,
                        nodes_to_exclude=list(fp32_nodes),
                        extra_options={"TensorQuantOverrides": overrides} if overrides else None)
        result = onnx.load(out)
        _float_logits(result)
    save(result, dst)


def node_ops(path: str | Path) -> list[tuple[str, str]]:
    """(name, op type) of every node, in graph order."""
    return [(n.name, n.op_type) for n in load(path).graph.node]


def static_int8_nodes(path: str | Path) -> list[str]:
    """The nodes of a static int8 (QDQ) model that hold int8 weights (a DequantizeLinear of
    an initializer feeds them), in graph order: the convs and matmuls where the precision
    goes. Their names are the ones quantize_static_int8's fp32_nodes takes (the quantizer
    keeps node names); a node kept in fp32 keeps fp32 weights and is not listed."""
    model = load(path)
    inits = {t.name for t in model.graph.initializer}
    int8_weights = {n.output[0] for n in model.graph.node
                    if n.op_type == "DequantizeLinear" and n.input[0] in inits}
    return [n.name for n in model.graph.node
            if n.op_type not in ("QuantizeLinear", "DequantizeLinear") and int8_weights & set(n.input)]


def convert_fp16(src: str | Path, dst: str | Path) -> None:
    """fp16 weights and activations; float32 INPUT/OUTPUT through Casts at the edges."""
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = load(src)
    with failing_step(f"fp16 conversion of {src}"):
        result = convert_float_to_float16(model, keep_io_types=True)
        OnnxModel(result).topological_sort()  # the output Cast comes last; the checker wants order
    save(result, dst)
