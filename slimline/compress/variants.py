"""ONNX variants of each trained model: the fp32 export (checked against torch), then
dynamic int8, static int8 (QDQ) and fp16 as quantize.variants asks."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from slimline.compress.export import checked_logits, export_onnx
from slimline.compress.quantization import convert_fp16, quantize_dynamic_int8
from slimline.compress.sensitivity import accuracy, static_int8_within_budget
from slimline.errors import StageError
from slimline.model import load_model
from slimline.params import QuantizeParams
from slimline.paths import NOT_APPLICABLE
from slimline.runtime.onnxruntime import agreement, predict

# Variants made only for models worth shipping; the scratch student is the KD ablation.
FP32_ONLY = {"student_scratch"}


def find_models(models: Path, prune_methods: list[str]) -> dict[str, Path]:
    """name -> model folder, for every model the current DAG produces.

    Pruned variants come from prune.methods, not from a directory listing: a
    method dropped from params leaves its old folder on disk, which must not
    be evaluated as if it were current.
    """
    found = {}
    for name in ("baseline", "student", "student_scratch"):
        if (models / name / "structure.json").exists():
            found[name] = models / name
    for method in sorted(prune_methods):  # params order must not change the outputs
        folder = models / "pruned" / method
        if (folder / NOT_APPLICABLE).exists():
            continue  # the method could not apply to this model; its report says why
        if not (folder / "structure.json").exists():
            raise StageError(f"no pruned model in {folder}: run the `prune@{method}` stage first")
        found[f"prune_{method}"] = folder
    if "baseline" not in found:
        raise StageError("no models/baseline: run the `train_baseline` stage first")
    return found


def make_variants(name: str, folder: Path, out: Path, x_test: np.ndarray, calib: np.ndarray,
                  val: tuple[np.ndarray, np.ndarray], cfg: QuantizeParams) -> list[dict]:
    """Write every one of `name`'s ONNX files into `out`, the fp32 export first. Per file:
    {"path", "variant", "fp32_nodes" (static int8: nodes kept in fp32), and this CPU's
    measurements, for the report only: "agreement" (top-1 with fp32 on test; None for
    fp32), "val_drop" (val accuracy below fp32's, a fraction), "sensitivity" (static
    int8, when scanned), "shortfall" (static int8: how it misses
    quantize.max_accuracy_drop, "" when it does not)}. No file is left out for its
    numbers: evaluate's quantize gate decides what may ship."""
    model, spec = load_model(folder)
    fp32 = out / f"{name}.onnx"
    export_onnx(model, spec.input_shape, fp32, opset=cfg.opset)
    ref = checked_logits(model, fp32, x_test)
    x_val, y_val = val
    ref_val = accuracy(fp32, x_val, y_val)
    entries = [{"path": fp32, "variant": "fp32", "agreement": None, "val_drop": 0.0, "fp32_nodes": [],
                "sensitivity": [], "shortfall": ""}]
    if name in FP32_ONLY:
        return entries
    for variant in cfg.variants:
        path = out / f"{name}.{variant if variant == 'fp16' else 'int8_' + variant}.onnx"
        entry = {"path": path, "variant": variant, "fp32_nodes": [], "sensitivity": [], "shortfall": ""}
        if variant == "static":
            got = static_int8_within_budget(fp32, path, calib, cfg.calibration_batch_size, x_val, y_val,
                                            cfg.max_accuracy_drop, cfg.max_excluded, ref=ref_val,
                                            scan=cfg.sensitivity_scan)
            entry.update(fp32_nodes=got.fp32_nodes, sensitivity=got.sensitivity, shortfall=got.shortfall,
                         val_drop=got.val_drop)  # measured on the file as written
        else:
            if variant == "dynamic":
                quantize_dynamic_int8(fp32, path)
            else:
                convert_fp16(fp32, path)
            entry["val_drop"] = ref_val - accuracy(path, x_val, y_val)
        entry["agreement"] = agreement(predict(path, x_test), ref)
        entries.append(entry)
    return entries
