"""Fixtures shared by the unit modules that run small ONNX files (tests/support/onnx_models.py)."""
from __future__ import annotations

import pytest
import torch

from tests.support.onnx_models import onnx_files, trained_model


@pytest.fixture(scope="session")
def trained() -> torch.nn.Module:
    """The small trained model, trained once per process."""
    return trained_model()


@pytest.fixture(scope="session")
def static_files(trained, tmp_path_factory) -> dict:
    """Its fp32 export and static int8 conversion, made once per process: what the
    runtime tests run on ONNX Runtime and on OpenVINO."""
    return onnx_files(trained, tmp_path_factory.mktemp("onnx"), kinds=("static",))
