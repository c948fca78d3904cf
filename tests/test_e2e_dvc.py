"""`dvc repro` end to end in temporary clones: outputs, no-op reruns, bit-identical hashes."""
import json
import os

import pytest
import yaml

from conftest import ROOT, copy_project, dvc, sh, update_params


def lock_outs(root):
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    return {o["path"]: o["md5"] for st in lock["stages"].values() for o in st.get("outs", [])}


def test_tiny_repro_produces_every_output(tiny_pipeline):
    for path in ["data/prepared/train.safetensors", "data/prepared/meta.json",
                 "models/baseline/model.safetensors", "models/baseline/structure.json",
                 "reports/prepare.json", "reports/prepare.md", "reports/train_baseline.json",
                 "reports/train_baseline.md", "dvclive/train_baseline/plots/metrics/val/acc.tsv"]:
        assert (tiny_pipeline / path).is_file(), path
    report = json.loads((tiny_pipeline / "reports/train_baseline.json").read_text())
    assert report["epochs"] == 2 and 0.0 <= report["test_accuracy"] <= 1.0
    assert "train_seconds" not in report  # timings stay out of the tracked metrics
    prep = json.loads((tiny_pipeline / "reports/prepare.json").read_text())
    assert sum(prep["sizes"].values()) == 400 and prep["validation"]["success"]
    # the stages wrote epoch curves DVC can plot and metrics it can show
    shown = dvc("metrics", "show", "--json", cwd=tiny_pipeline).stdout
    assert "test_accuracy" in shown


def test_second_repro_runs_nothing(pipeline_copy):
    out = dvc("repro", cwd=pipeline_copy).stdout
    assert "Running stage" not in out
    assert dvc("status", cwd=pipeline_copy).stdout.strip().endswith("up to date.")


def test_changing_a_train_key_does_not_rerun_prepare(pipeline_copy):
    update_params(pipeline_copy, {"train": {"lr": 0.02}})
    out = dvc("repro", cwd=pipeline_copy).stdout
    assert "Running stage 'train_baseline'" in out
    assert "Running stage 'prepare'" not in out


def test_resume_folder_removed_after_success(tiny_pipeline):
    resume = tiny_pipeline / ".slimline" / "resume"
    assert not resume.exists() or not any(resume.iterdir())


def test_fresh_clone_reproduces_committed_hashes_bit_for_bit(tmp_path):
    """The committed dvc.lock (default config) is reproduced exactly on this kind of machine."""
    if not (ROOT / "dvc.lock").exists():
        pytest.skip("no committed dvc.lock yet")
    root = copy_project(tmp_path / "fresh")
    committed = lock_outs(root)
    dvc("repro", cwd=root)
    assert lock_outs(root) == committed
    diff = sh(["git", "diff", "--stat", "dvc.lock"], root).stdout
    assert diff == "", diff
