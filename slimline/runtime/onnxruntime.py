"""ONNX Runtime: sessions, predictions, top-1 agreement, and fair timing (latency,
throughput, the runtime floor), on the CPU provider or, named, a GPU one.

Every session gets the same options, so that timings compare like with like. The
training stages time their run records here, so this module never imports OpenVINO
(slimline/runtime/openvino.py is the other runtime, a dep of evaluate only).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from slimline.compress.onnx_files import INPUT, OUTPUT, OnnxFileError
from slimline.runtime import timing
from slimline.runtime.timing import call_times, percentiles_ms, seeded_input

CPU = ("CPUExecutionProvider",)
# evaluate.runtimes names -> execution providers, in ORT's order of preference. The GPU
# providers come with the onnxruntime-gpu package (`make setup-gpu`), not the CPU build.
PROVIDERS = {"onnxruntime": CPU,
             "onnxruntime-cuda": ("CUDAExecutionProvider", *CPU),
             "onnxruntime-tensorrt": ("TensorrtExecutionProvider", "CUDAExecutionProvider", *CPU)}


def _options(threads: int) -> ort.SessionOptions:
    """The same options for every model, so that timings compare like with like."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return opts


def missing_provider(providers: tuple[str, ...] = CPU) -> str | None:
    """The first of `providers` this onnxruntime build lacks (None: it has them all)."""
    have = set(ort.get_available_providers())
    return next((p for p in providers if p not in have), None)


def session(path: str | Path, threads: int = 1, providers: tuple[str, ...] = CPU) -> ort.InferenceSession:
    path = Path(path)
    if not path.is_file():
        raise OnnxFileError(f"{path}: ONNX model not found")
    try:
        return ort.InferenceSession(str(path), _options(threads), providers=list(providers))
    except Exception as err:
        raise OnnxFileError(f"ONNX Runtime cannot load {path}: {err}") from err


def floor_model(input_shape: tuple, opset: int = 17) -> onnx.ModelProto:
    """The runtime floor's graph: one Relu (it reads and writes every pixel) on the models'
    input. Every runtime times it under its own options, as its own floor."""
    dims = ["batch", *input_shape]
    graph = helper.make_graph(
        [helper.make_node("Relu", [INPUT], [OUTPUT], "floor")], "runtime_floor",
        [helper.make_tensor_value_info(INPUT, onnx.TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info(OUTPUT, onnx.TensorProto.FLOAT, dims)])
    # IR 8 goes with opset 17: pinned, so a newer onnx package cannot outrun the runtime
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def floor_session(input_shape: tuple, threads: int = 1,
                  providers: tuple[str, ...] = CPU) -> ort.InferenceSession:
    """The runtime floor: a one-op graph (Relu, which reads and writes every pixel) on the
    models' input, under the same options as every model. Its p50 is the least a sess.run
    call costs here, so a model close to it has no latency left to win by shrinking."""
    return ort.InferenceSession(floor_model(input_shape).SerializeToString(), _options(threads),
                                providers=list(providers))


def _session(sess_or_path, shape: tuple) -> ort.InferenceSession:
    """A session for sess_or_path that accepts pixels of `shape` (N, C, H, W)."""
    sess = sess_or_path if isinstance(sess_or_path, ort.InferenceSession) else session(sess_or_path)
    want = sess.get_inputs()[0].shape[1:]
    if len(shape) != 4 or any(isinstance(w, int) and w != g for w, g in zip(want, shape[1:], strict=False)):
        name = getattr(sess, "_model_path", None) or sess_or_path
        raise ValueError(f"{name} takes pixels of shape (N, {', '.join(map(str, want))}), got {tuple(shape)}")
    return sess


def predict(sess_or_path, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Logits (N, K) float32 for raw pixels x (N, C, H, W): any dtype, converted to float32
    a batch at a time (x may be a memory-mapped split larger than memory)."""
    sess = _session(sess_or_path, x.shape)
    outs = [sess.run([OUTPUT], {INPUT: np.ascontiguousarray(x[i:i + batch_size], dtype=np.float32)})[0]
            for i in range(0, len(x), batch_size)]
    if not outs:
        return np.zeros((0, sess.get_outputs()[0].shape[1]), np.float32)
    return np.concatenate(outs).astype(np.float32, copy=False)


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of rows whose argmax (top-1 class) is the same in both logit arrays."""
    if a.shape != b.shape or a.ndim != 2 or len(a) == 0:
        raise ValueError(f"agreement needs two non-empty (N, K) logit arrays, got {a.shape} and {b.shape}")
    return float(np.mean(a.argmax(1) == b.argmax(1)))


def caller(sess_or_path, input_shape, batch: int) -> Callable[[], object]:
    """One sess.run on a fixed seeded input whose feed is built once: only the run is timed."""
    sess = _session(sess_or_path, (batch, *input_shape))
    feed = {INPUT: seeded_input((batch, *input_shape))}
    return lambda: sess.run([OUTPUT], feed)


def timings(sess_or_path, input_shape, batch: int, warmup: int, repeats: int) -> np.ndarray:
    """Seconds per sess.run call, `repeats` of them after `warmup` untimed ones."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    return call_times(caller(sess_or_path, input_shape, batch), warmup, repeats)


def latency_ms(sess_or_path, input_shape, batch: int = 1, warmup: int = 20, repeats: int = 200) -> dict:
    """Milliseconds per sess.run call: {"p50", "p95", "p99", "mean"}."""
    return percentiles_ms(timings(sess_or_path, input_shape, batch, warmup, repeats))


def throughput(sess_or_path, input_shape, batch: int = 256, warmup: int = 3, repeats: int = 10,
               budget_s: float = 3.0) -> float:
    """Images per second at batch `batch` (timing.throughput: at most about budget_s)."""
    return timing.throughput(caller(sess_or_path, input_shape, batch), batch, warmup, repeats, budget_s)
