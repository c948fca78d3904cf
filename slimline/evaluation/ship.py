"""The ship bundle, in models/ship/: the selected model with its labels and a manifest that
names the runtime it won on and that runtime's settings (`slimline predict` applies them).

    model.onnx             always: any runtime can run it
    model.xml, model.bin   the OpenVINO IR, when the pair to ship runs on OpenVINO
    labels.json, manifest.json, MODEL_CARD.md
"""
from __future__ import annotations

from pathlib import Path

from slimline.compress.onnx_files import INPUT
from slimline.evaluation.manifests import CALIBRATED
from slimline.io import atomic_dir, write_json
from slimline.repo import GitError, git


def git_commit() -> str | None:
    """HEAD, with "-dirty" when tracked files differ from it (the usual case mid-run,
    since DVC updates dvc.lock only after the stage)."""
    try:
        return git("describe", "--always", "--dirty", "--abbrev=40")
    except (OSError, GitError):  # no git, or not a repository
        return None


def write_ship(ship: Path, chosen: dict | None, entries: list[dict], calibration: dict, prep, hw: dict,
               why: str, card: str | None = None, runtime: dict | None = None) -> None:
    """entries, calibration: manifests.read_variants'. `runtime`: the chosen pair's runtime as
    reports/evaluate.json's "runtimes" has it ({"version", "settings", ...})."""
    with atomic_dir(ship) as tmp:
        if card is not None:  # also when nothing ships: the card then says why
            (tmp / "MODEL_CARD.md").write_text(card)
        if chosen is None:
            write_json(tmp / "manifest.json", {"selected": None, "reason": why})
            return
        entry = next(e for e in entries if e["name"] == chosen["variant"])
        (tmp / "model.onnx").write_bytes(Path(entry["path"]).read_bytes())
        files = {"onnx": "model.onnx"}
        if chosen["runtime"].startswith("openvino"):
            from slimline.runtime.openvino import save_ir

            save_ir(tmp / "model.onnx", tmp / "model.xml")
            files["openvino"] = "model.xml"
        # An image folder's class names; label k otherwise.
        write_json(tmp / "labels.json", prep.meta.get("classes") or [str(i) for i in range(prep.num_classes)])
        write_json(tmp / "manifest.json", {
            "selected": chosen["name"], "variant": chosen["variant"], "source": entry["source"],
            "opset": entry["opset"], "files": files,
            "runtime": {"name": chosen["runtime"], "version": (runtime or {}).get("version"),
                        "precision": chosen["precision"], "settings": (runtime or {}).get("settings")},
            "input": {"name": INPUT, "shape": ["batch", *prep.input_shape], "dtype": "float32",
                      "pixels": "raw, 0..255; normalisation is inside the model",
                      # image folders resized every image at prepare: predict does the same
                      **({"resize": True} if prep.meta.get("resized") else {}),
                      # data.normalize for imported weights (inside the model too), for the record
                      **({"normalize": prep.meta["normalize"]} if prep.meta.get("normalize") else {})},
            "quantization": {"kind": entry["quantization"],  # calibration: static int8's ranges, QAT's start
                             **(calibration if entry["quantization"] in CALIBRATED else {}),
                             **({"qat": entry["qat"]} if "qat" in entry else {})},
            # measured on the runtime above
            "metrics": {k: chosen[k] for k in ("accuracy", "accuracy_ci95", "val_accuracy", "bytes",
                                               "p50_ms_b1", "p95_ms_b1", "p99_ms_b1", "throughput_b256")},
            "hardware": hw, "git_commit": git_commit()})

