"""OpenVINO: the same ONNX files that ONNX Runtime runs, compiled for the CPU and timed
the way OpenVINO is fast and fair (docs/compression.md, evaluate; docs/results.md, "Runtimes"):

- INFERENCE_PRECISION_HINT f32, unless bf16 is asked for by name (`openvino-bf16`): on CPUs
  with AVX512_BF16 OpenVINO's default is bf16, which changes accuracy and timing;
- 1 thread (evaluate.threads), the LATENCY hint, one stream;
- a static batch: the file's `batch` dimension is fixed at compile time (a dynamic one
  costs a shape inference per call, a third of a small model's p50);
- one reused infer request whose input is bound once, in shared memory: passing a dict to
  `infer` on every call costs about 100 µs from Python, ten times the real floor.

Only evaluate and `slimline predict` on an OpenVINO bundle import this module: training
stays on ONNX Runtime, and a machine without OpenVINO runs everything else.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
import openvino as ov

from slimline.compress.onnx_files import INPUT, OnnxFileError
from slimline.runtime.timing import seeded_input

PRECISIONS = {"openvino": "f32", "openvino-bf16": "bf16"}


def config(threads: int, precision: str = "f32") -> dict:
    """The compile settings of every model and the floor (the ship manifest records them)."""
    return {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
            "INFERENCE_PRECISION_HINT": precision}


@lru_cache(maxsize=1)
def core() -> ov.Core:
    return ov.Core()


def version() -> str:
    return ov.__version__.split("-")[0]


def read(path: str | Path) -> ov.Model:
    """The model in an ONNX file (or an OpenVINO IR .xml), named on failure."""
    path = Path(path)
    if not path.is_file():
        raise OnnxFileError(f"{path}: model not found")
    try:
        return core().read_model(str(path))
    except Exception as err:  # noqa: BLE001 - OpenVINO raises RuntimeError for any unreadable file
        raise OnnxFileError(f"OpenVINO cannot read {path}: {str(err).splitlines()[-1]}") from None


def floor_model(input_shape: tuple) -> ov.Model:
    """The runtime floor: one Relu on the models' input, as ONNX Runtime's (onnxruntime.floor_model)."""
    import openvino.opset13 as ops

    x = ops.parameter([-1, *input_shape], ov.Type.f32, name=INPUT)
    return ov.Model([ops.relu(x)], [x], "runtime_floor")


class Runner:
    """One model compiled per batch size (a static batch is faster; see the module doc)."""

    def __init__(self, model: ov.Model, input_shape: tuple, threads: int = 1, precision: str = "f32",
                 name: str = "model"):
        self.model, self.shape, self.name = model, tuple(input_shape), name
        self.settings = config(threads, precision)
        want = [d.get_length() if d.is_static else None for d in model.inputs[0].get_partial_shape()][1:]
        if len(want) != len(self.shape) or any(w not in (None, g) for w, g in zip(want, self.shape)):  # noqa: B905
            raise ValueError(f"{name} takes pixels of shape (N, {', '.join(map(str, want))}), "
                             f"got (N, {', '.join(map(str, self.shape))})")
        self._compiled: dict[int, ov.CompiledModel] = {}

    def compiled(self, batch: int) -> ov.CompiledModel:
        if batch not in self._compiled:
            model = self.model.clone()
            model.reshape({model.inputs[0]: ov.PartialShape([batch, *self.shape])})
            try:
                self._compiled[batch] = core().compile_model(model, "CPU", self.settings)
            except Exception as err:  # noqa: BLE001 - an op the CPU plugin lacks, for one
                raise OnnxFileError(f"OpenVINO cannot compile {self.name}: "
                                    f"{str(err).strip().splitlines()[-1]}") from None
        return self._compiled[batch]

    @property
    def precision(self) -> str:
        """The precision OpenVINO computes floating-point ops in, read back from the compiled model."""
        return self.compiled(1).get_property("INFERENCE_PRECISION_HINT").to_string()

    def predict(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Logits (N, K) float32 for raw pixels x (N, C, H, W): any dtype, converted to
        float32 a batch at a time (x may be a memory-mapped split larger than memory)."""
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"{self.name} takes pixels of shape (N, {', '.join(map(str, self.shape))}), "
                             f"got {tuple(x.shape)}")
        outs = []
        for i in range(0, len(x), batch_size):
            chunk = np.ascontiguousarray(x[i:i + batch_size], dtype=np.float32)
            n = len(chunk)
            if i and n < batch_size:  # pad the last chunk: one compiled batch size, not two
                chunk = np.concatenate([chunk, np.zeros((batch_size - n, *self.shape), np.float32)])
            request = self.compiled(len(chunk)).create_infer_request()
            outs.append(np.array(request.infer({0: chunk})[0][:n], dtype=np.float32))
        if not outs:
            return np.zeros((0, self.compiled(1).outputs[0].get_partial_shape()[1].get_length()), np.float32)
        return np.concatenate(outs)

    def caller(self, batch: int) -> Callable[[], object]:
        """One inference on a fixed seeded input bound once in shared memory, on a reused request."""
        request = self.compiled(batch).create_infer_request()
        x = seeded_input((batch, *self.shape))
        request.set_input_tensor(ov.Tensor(x, shared_memory=True))
        request._x = x  # the request reads x's memory: keep it alive as long as the request
        return lambda: request.infer(share_inputs=True, share_outputs=True)


def load(path: str | Path, input_shape: tuple, threads: int = 1, precision: str = "f32") -> Runner:
    runner = Runner(read(path), input_shape, threads, precision, name=str(path))
    runner.compiled(1)  # an op the CPU plugin lacks fails here, at load, as in ONNX Runtime
    return runner


def floor(input_shape: tuple, threads: int = 1, precision: str = "f32") -> Runner:
    return Runner(floor_model(input_shape), input_shape, threads, precision, name="runtime floor")


def save_ir(onnx_path: Path, xml_path: Path) -> None:
    """The OpenVINO IR (model.xml + model.bin) of an ONNX file, weights as they are (no fp16
    compression): what an OpenVINO ship bundle runs."""
    ov.save_model(read(onnx_path), str(xml_path), compress_to_fp16=False)
