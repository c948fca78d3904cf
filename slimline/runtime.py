"""The ONNX Runtime side of running and timing a model: sessions, predictions, top-1
agreement, and fair CPU timing (latency, throughput, the runtime floor).

Every session gets the same options, so that timings compare like with like.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from slimline.compress.onnx_files import INPUT, OUTPUT, OnnxFileError


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
    if len(shape) != 4 or any(isinstance(w, int) and w != g for w, g in zip(want, shape[1:], strict=False)):
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
