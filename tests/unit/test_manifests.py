"""evaluate's list of variants: quantize's manifest and each QAT stage's, as the params name them."""
import json
from pathlib import Path

import pytest

from slimline.errors import StageError
from slimline.evaluation.manifests import read_variants
from slimline.params import QatParams


def write(folder, manifest):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_quantize_and_qat_variants_come_with_their_files_paths(tmp_path):
    onnx, qat = tmp_path / "onnx", tmp_path / "qat"
    write(onnx, {"variants": [{"name": "student", "file": "student.onnx"}], "calibration": {"batches": 2}})
    write(qat / "student", {"variants": [{"name": "student.int8_qat", "file": "student.int8_qat.onnx"}]})
    write(qat / "baseline", {"variants": [{"name": "stale", "file": "stale.onnx"}]})  # no longer listed
    entries, calibration = read_variants(onnx, qat, QatParams(enabled=True, models=["student"]))
    assert [(e["name"], e["path"]) for e in entries] == [
        ("student", f"{onnx}/student.onnx"), ("student.int8_qat", f"{qat}/student/student.int8_qat.onnx")]
    assert calibration == {"batches": 2}
    # QAT off: its stages' folders hold no variant, and evaluate does not need them
    entries, _ = read_variants(onnx, tmp_path / "nowhere", QatParams(models=["student"], pruned=["layer"]))
    assert [e["name"] for e in entries] == ["student"]


def test_a_missing_manifest_names_the_stage_to_run(tmp_path):
    with pytest.raises(StageError, match="run the `quantize` stage first"):
        read_variants(tmp_path / "onnx", tmp_path / "qat", QatParams())
    write(tmp_path / "onnx", {"variants": []})
    with pytest.raises(StageError, match="run the `qat_prune@structured` stage first"):
        read_variants(tmp_path / "onnx", tmp_path / "qat",
                      QatParams(enabled=True, models=[], pruned=["structured"]))


def test_a_qat_stage_with_nothing_to_train_writes_an_empty_manifest_saying_why(tmp_path, monkeypatch):
    """QAT off, or its pruned model not applicable: no variant, no torch, a report that says why."""
    import argparse

    from slimline.params import parse_params
    from slimline.paths import NOT_APPLICABLE
    from tasks.qat import qat

    monkeypatch.chdir(tmp_path)
    (tmp_path / "models/pruned/structured").mkdir(parents=True)
    (tmp_path / "models/pruned/structured" / NOT_APPLICABLE).write_text("{}")
    cases = [({"qat": {"enabled": False}}, "student", "qat.enabled is false"),
             ({"qat": {"enabled": True, "pruned": ["structured"]}}, "prune_structured",
              "models/pruned/structured is not applicable: reports/prune_structured.json says why")]
    for raw, name, why in cases:
        out = tmp_path / "models/qat" / name
        qat(parse_params(raw), argparse.Namespace(model=name, data=tmp_path / "data", models=Path("models"),
                                                  out=out))
        assert json.loads((out / "manifest.json").read_text()) == {"variants": [], "disabled": why}
        assert json.loads((tmp_path / f"reports/qat_{name}.json").read_text())["disabled"] == why
    entries, _ = read_variants(write_onnx(tmp_path), tmp_path / "models/qat",
                               QatParams(enabled=True, models=["student"], pruned=["structured"]))
    assert [e["name"] for e in entries] == []


def write_onnx(root):
    write(root / "models/onnx", {"variants": []})
    return root / "models/onnx"


def test_a_qat_report_names_the_tensors_training_did_not_simulate():
    from tasks.qat import render

    r = {"variant": "student.int8_qat", "source": "student", "epochs": 2, "lr": 0.005, "best_epoch": 1,
         "bytes": 1000, "zeros_held": 0, "fp32_val_accuracy": 0.9, "fp32_test_accuracy": 0.9,
         "val_accuracy": 0.9, "test_accuracy": 0.9, "agreement": 1.0, "val_acc_calibrated": 0.9,
         "history": [{"epoch": 1, "val_acc": 0.9, "train_loss": 0.1}]}
    assert "Not simulated" not in render("qat_student", {**r, "unsimulated": []})
    blind = [f"Sigmoid /s{i}" for i in range(12)] + ["Split /p"] * 3  # one Split, three outputs
    text = render("qat_student", {**r, "unsimulated": blind})
    assert ("**Not simulated in training:** 15 tensor(s) the int8 file quantizes, by ops the fake "
            "quantization does not model; their ranges come from calibration alone: `Sigmoid /s0`") in text
    assert "`Sigmoid /s9` and 3 more." in text and "/s10" not in text  # nodes: the Split once
