"""The runtimes evaluate can time and ship on, by their evaluate.runtimes names: one
interface over each runtime's module, which is imported only when its name is used.

    runner = load("openvino", "models/onnx/student.int8_static.onnx", (1, 28, 28))
    runner.predict(x)      # logits, (N, K) float32
    runner.caller(1)       # one batch-1 inference on an input bound once, for timing
    runner.precision       # what the runtime computes floating-point ops in

A runtime that is not installed is named with the command that installs it (`missing`),
before any work: `slimline check` and evaluate refuse it.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from slimline.params import RUNTIMES  # the names, one source: the params schema

OPENVINO = ("openvino", "openvino-bf16")
GPU_SETUP = "make setup-gpu (the onnxruntime-gpu package in place of onnxruntime; docs/operations.md)"


def missing(name: str) -> str | None:
    """Why runtime `name` cannot run here, with the fix; None when it can."""
    if name not in RUNTIMES:
        return f"unknown runtime {name!r}: one of {', '.join(RUNTIMES)}"
    if name in OPENVINO:
        if importlib.util.find_spec("openvino") is None:
            return (f"runtime {name} needs OpenVINO, which is not installed: "
                    f"pip install -c constraints.txt openvino")
        return None
    from slimline.runtime.onnxruntime import PROVIDERS, missing_provider

    lacking = missing_provider(PROVIDERS[name])
    if lacking:
        return (f"runtime {name} needs ONNX Runtime's {lacking}, which this onnxruntime build lacks: "
                f"{GPU_SETUP}")
    return None


def version(name: str) -> str:
    if name in OPENVINO:
        from slimline.runtime import openvino

        return openvino.version()
    import onnxruntime

    return onnxruntime.__version__


def settings(name: str, threads: int) -> dict:
    """How `name` runs every model: what the ship manifest records and predict applies."""
    if name in OPENVINO:
        from slimline.runtime import openvino

        return {"device": "CPU", "batch": "static (compiled per batch size)",
                **openvino.config(threads, openvino.PRECISIONS[name])}
    from slimline.runtime.onnxruntime import PROVIDERS

    return {"providers": list(PROVIDERS[name]), "intra_op_num_threads": threads, "inter_op_num_threads": 1,
            "execution_mode": "sequential", "graph_optimization_level": "all"}


class _Ort:
    """ONNX Runtime behind the same interface as openvino.Runner."""

    def __init__(self, sess, input_shape: tuple, name: str):
        from slimline.runtime import onnxruntime as ort_runtime

        self._rt, self.session, self.shape, self.name = ort_runtime, sess, tuple(input_shape), name
        ort_runtime._session(sess, (1, *self.shape))  # the shape check, named, at load
        self.precision = "as stored"  # ORT runs each op in its file's types

    def predict(self, x, batch_size: int = 256):
        return self._rt.predict(self.session, x, batch_size)

    def caller(self, batch: int):
        return self._rt.caller(self.session, self.shape, batch)


def load(name: str, path: str | Path, input_shape: tuple, threads: int = 1):
    """`path` ready to run on runtime `name`; OnnxFileError (a ValueError) when it cannot load it."""
    if name in OPENVINO:
        from slimline.runtime import openvino

        return openvino.load(path, input_shape, threads, openvino.PRECISIONS[name])
    from slimline.runtime import onnxruntime as ort_runtime

    return _Ort(ort_runtime.session(path, threads, ort_runtime.PROVIDERS[name]), input_shape, str(path))


def floor(name: str, input_shape: tuple, threads: int = 1):
    """Runtime `name`'s floor: a one-op graph on the models' input, under the same settings."""
    if name in OPENVINO:
        from slimline.runtime import openvino

        return openvino.floor(input_shape, threads, openvino.PRECISIONS[name])
    from slimline.runtime import onnxruntime as ort_runtime

    return _Ort(ort_runtime.floor_session(input_shape, threads, ort_runtime.PROVIDERS[name]), input_shape,
                "runtime floor")
