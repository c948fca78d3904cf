"""The runtimes evaluate can time and ship on (slimline.runtime.registry): a runtime that cannot
run here is named with the command that installs it, before any work."""
from __future__ import annotations

import importlib.util

import numpy as np
import onnxruntime
import pytest

from slimline.params import RUNTIMES
from slimline.runtime import onnxruntime as ort_runtime
from slimline.runtime import registry
from tests.support.onnx_models import SHAPE, make_data, onnx_files, tiny_model

ALLOWED = ["onnxruntime", "openvino", "openvino-bf16", "onnxruntime-cuda", "onnxruntime-tensorrt"]


@pytest.fixture
def cpu_build(monkeypatch):
    """ONNX Runtime's CPU build, whatever is installed here: it has no GPU provider."""
    monkeypatch.setattr(onnxruntime, "get_available_providers",
                        lambda: ["AzureExecutionProvider", "CPUExecutionProvider"])


@pytest.fixture
def no_openvino(monkeypatch):
    """A machine without OpenVINO: its package is not found."""
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "openvino" else find_spec(name, *a))


def test_the_names_are_the_params_schema_s_and_the_cpu_ones_run_here(cpu_build):
    assert list(RUNTIMES) == ALLOWED
    for name in ("onnxruntime", "openvino", "openvino-bf16"):
        assert registry.missing(name) is None, name


def test_an_unknown_runtime_lists_the_allowed_names():
    why = registry.missing("tflite")
    assert why == f"unknown runtime 'tflite': one of {', '.join(ALLOWED)}"


def test_a_missing_openvino_names_the_pip_command(no_openvino):
    for name in ("openvino", "openvino-bf16"):
        assert registry.missing(name) == (f"runtime {name} needs OpenVINO, which is not installed: "
                                          f"pip install -c constraints.txt openvino")
    assert registry.missing("onnxruntime") is None  # ONNX Runtime needs no OpenVINO


def test_a_gpu_runtime_on_the_cpu_build_names_make_setup_gpu(cpu_build):
    cuda, trt = registry.missing("onnxruntime-cuda"), registry.missing("onnxruntime-tensorrt")
    assert "onnxruntime-cuda needs ONNX Runtime's CUDAExecutionProvider" in cuda
    assert "onnxruntime-tensorrt needs ONNX Runtime's TensorrtExecutionProvider" in trt
    for why in (cuda, trt):
        assert "this onnxruntime build lacks: make setup-gpu" in why and "onnxruntime-gpu" in why


def test_versions_and_settings_name_what_each_runtime_runs_with():
    assert registry.version("onnxruntime") == onnxruntime.__version__
    assert registry.version("openvino")[:1].isdigit() and registry.version("openvino").count(".") >= 1
    ort = registry.settings("onnxruntime", 3)
    assert ort["intra_op_num_threads"] == 3 and ort["providers"] == ["CPUExecutionProvider"]
    assert registry.settings("onnxruntime-cuda", 1)["providers"] == ["CUDAExecutionProvider",
                                                                     "CPUExecutionProvider"]
    ov = registry.settings("openvino-bf16", 3)
    assert (ov["INFERENCE_NUM_THREADS"], ov["INFERENCE_PRECISION_HINT"], ov["device"]) == (3, "bf16", "CPU")


def test_onnxruntime_runs_behind_the_same_interface(tmp_path):
    path = onnx_files(tiny_model().eval(), tmp_path, kinds=())["fp32"]
    x = make_data(5, seed=3)[0]
    runner = registry.load("onnxruntime", path, SHAPE, threads=1)
    assert runner.precision == "as stored"  # ORT runs each op in its file's types
    np.testing.assert_array_equal(runner.predict(x), ort_runtime.predict(path, x))
    runner.caller(1)()
    assert registry.floor("onnxruntime", SHAPE).predict(x).shape == (5, *SHAPE)
    with pytest.raises(ValueError, match=r"takes pixels of shape \(N, 1, 12, 12\)"):
        registry.load("onnxruntime", path, (1, 28, 28))
