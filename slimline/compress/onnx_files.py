"""What every model file is, and reading and writing one: the pieces that export,
quantization and the runtime share.

Every model file takes raw float32 pixels (N, C, H, W) as INPUT and returns
float32 logits (N, K) as OUTPUT, whatever its internal precision, so callers
feed the same arrays to every variant. Files pass onnx.checker before they are
written (atomically), and identical inputs give identical bytes (DVC hashes them).
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import onnx

from slimline.errors import StageError
from slimline.io import atomic_write_bytes

INPUT, OUTPUT = "pixels", "logits"


class OnnxFileError(StageError, ValueError):
    """A source ONNX file is missing, unreadable or not a valid model."""


@contextlib.contextmanager
def failing_step(what: str):
    """Re-raise a library failure as one RuntimeError that names the step and file."""
    try:
        yield
    except OnnxFileError:
        raise
    except Exception as err:
        raise RuntimeError(f"{what} failed: {err}") from err


def load(path: str | Path) -> onnx.ModelProto:
    """The checked model in `path`; an OnnxFileError that names the file when it is missing or invalid."""
    path = Path(path)
    if not path.is_file():
        raise OnnxFileError(f"{path}: ONNX model not found (run the export step first)")
    try:
        model = onnx.load_from_string(path.read_bytes())
        onnx.checker.check_model(model)
    except Exception as err:  # protobuf DecodeError, ValidationError, ...
        raise OnnxFileError(f"{path} is not a valid ONNX model ({err}); delete it and re-export") from err
    return model


def save(model: onnx.ModelProto, path: str | Path) -> None:
    """Write `model` to `path` atomically, only once it passes the full checker."""
    with failing_step(f"checking the model for {path} (not written)"):
        onnx.checker.check_model(model, full_check=True)
    atomic_write_bytes(path, model.SerializeToString())  # creates the parent folder


def drop_unused_initializers(model: onnx.ModelProto) -> None:
    """Drop initializers no node reads (ORT warns about each one at load)."""
    used = {i for n in model.graph.node for i in n.input}
    keep = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
