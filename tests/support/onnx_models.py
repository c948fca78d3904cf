"""The case the ONNX tests share: a tiny CNN trained to be confident on three clearly
separable classes, and its fp32 export with the conversions a test needs."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import onnx
import torch

from slimline.compress.export import export_onnx
from slimline.compress.quantization import convert_fp16, quantize_dynamic_int8, quantize_static_int8
from slimline.model import ModelSpec, build_model
from slimline.params import Structure

SHAPE = (1, 12, 12)
CORNERS = [(1, 1), (1, 7), (7, 4)]  # where each class's bright square sits


def make_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Three clearly separable classes: a bright 4x4 square in one of three places, plus noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.normal(40, 20, (n, *SHAPE))
    for i, label in enumerate(y):
        r, c = CORNERS[label]
        x[i, 0, r:r + 4, c:c + 4] += 150
    return x.clip(0, 255).astype(np.float32), y


def tiny_model(**structure) -> torch.nn.Module:
    s = Structure(**{"conv_channels": [4, 8], "hidden": [16], **structure})
    spec = ModelSpec(structure=s.model_dump(), input_shape=SHAPE, num_classes=3, mean=(100.0,), std=(60.0,))
    return build_model(spec)


@lru_cache(maxsize=1)
def trained_model() -> torch.nn.Module:
    """The tiny CNN after 200 seeded SGD steps: confident, so agreement is meaningful. Trained
    once per test process for every module that asks; tests only read it (export and
    fold_check work on copies)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny batches: threads only add overhead (and noise on shared CI)
    try:
        torch.manual_seed(0)
        model = tiny_model()
        x, y = (torch.from_numpy(a) for a in make_data(512, seed=0))
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        for _ in range(200):
            idx = torch.randint(0, len(x), (64,))
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    held_out, labels = make_data(300, seed=1)
    with torch.no_grad():
        assert (model(torch.from_numpy(held_out)).argmax(1).numpy() == labels).mean() > 0.98
    return model


def onnx_files(model: torch.nn.Module, folder: Path, kinds=("dynamic", "static", "fp16")) -> dict[str, Path]:
    """The model's fp32 export in `folder`, and the conversions named in `kinds`."""
    paths = {k: folder / f"{k}.onnx" for k in ("fp32", *kinds)}
    export_onnx(model, SHAPE, paths["fp32"])
    if "dynamic" in kinds:
        quantize_dynamic_int8(paths["fp32"], paths["dynamic"])
    if "static" in kinds:
        quantize_static_int8(paths["fp32"], paths["static"], make_data(200, seed=2)[0], batch_size=64)
    if "fp16" in kinds:
        convert_fp16(paths["fp32"], paths["fp16"])
    return paths


def ops(path) -> list[str]:
    return [n.op_type for n in onnx.load(path).graph.node]
