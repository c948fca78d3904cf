"""The variants evaluate measures: quantize's (models/onnx/manifest.json) and each QAT stage's
(models/qat/<model>/manifest.json), as one list whose entries say where their file is."""
from __future__ import annotations

import json
from pathlib import Path

from slimline.errors import StageError

CALIBRATED = ("static", "qat")  # the quantizations whose activation ranges start from calibration


def qat_models(qat) -> list[str]:
    """The models whose QAT variant the current params ask for: from params, not a directory
    listing, so a model dropped from qat.models leaves an old folder that is not evaluated;
    none with qat.enabled false (each QAT stage then writes an empty manifest)."""
    return [*qat.models, *(f"prune_{m}" for m in qat.pruned)] if qat.enabled else []


def _read(path: Path, stage: str) -> dict:
    if not path.exists():
        raise StageError(f"{path} is missing: run the `{stage}` stage first")
    return json.loads(path.read_text())


def read_variants(onnx_dir: Path, qat_dir: Path, qat) -> tuple[list[dict], dict]:
    """(every variant's manifest entry with its "path", the calibration of static int8).
    Each entry is as its stage wrote it (name, file, source, source_dir, quantization,
    opset, ...) plus "path": its ONNX file."""
    quant = _read(onnx_dir / "manifest.json", "quantize")
    entries = [{**e, "path": (onnx_dir / e["file"]).as_posix()} for e in quant["variants"]]
    for name in qat_models(qat):
        folder = qat_dir / name
        stage = f"qat_prune@{name.removeprefix('prune_')}" if name.startswith("prune_") else f"qat@{name}"
        entries += [{**e, "path": (folder / e["file"]).as_posix()}
                    for e in _read(folder / "manifest.json", stage)["variants"]]
    return entries, quant.get("calibration", {})
