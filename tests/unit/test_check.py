"""`slimline check`: the project root on sys.path, and --write-deps, which declares the files
params.yaml brings; a deployment's run (slimline.overrides.validate) refuses instead."""
from __future__ import annotations

import shutil
import sys

import pytest
import yaml

from slimline import check
from slimline.project import find_root, importable
from tests.support.project import ROOT


@pytest.fixture
def project(tmp_path):
    """dvc.yaml and params.yaml of the project, with data.path at a new image folder."""
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    # image_size and channels given: the preflight knows the shape without prepare, and the
    # built-in cnn needs no torch to check
    raw["data"].update(source="imagefolder", path="photos", image_size=[16, 16], channels=1)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    (tmp_path / "photos").mkdir()
    return tmp_path


def prepare_deps(root) -> list[str]:
    return yaml.safe_load((root / "dvc.yaml").read_text())["stages"]["prepare"]["deps"]


def test_find_root_walks_up_to_dvc_yaml_and_importable_goes_first_once(project, monkeypatch):
    (project / "sub" / "deeper").mkdir(parents=True)
    assert find_root(project / "sub" / "deeper") == project.resolve()
    assert find_root(project.parent) is None or find_root(project.parent) != project.resolve()
    monkeypatch.setattr(sys, "path", ["/elsewhere", str(project.resolve())])
    importable(project)
    importable(project)
    assert sys.path == [str(project.resolve()), "/elsewhere"]


def test_new_data_is_refused_naming_the_fix_then_write_deps_declares_it(project, capsys):
    params = str(project / "params.yaml")
    assert check.main([params]) == 2
    err = capsys.readouterr().err
    assert "prepare: photos" in err and "slimline check --write-deps" in err
    assert "photos" not in prepare_deps(project)  # plain check never edits dvc.yaml

    assert check.main([params, "--write-deps"]) == 0
    out = capsys.readouterr().out
    assert "dvc.yaml: prepare now depends on photos" in out and "OK" in out
    assert "photos" in prepare_deps(project)
    assert check.main([params, "--write-deps"]) == 0
    assert "now depends" not in capsys.readouterr().out  # nothing more to add


def test_write_deps_leaves_dvc_yaml_alone_when_params_are_invalid(project, capsys):
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["train"]["lr"] = -1
    (project / "params.yaml").write_text(yaml.safe_dump(raw))
    before = (project / "dvc.yaml").read_text()
    assert check.main([str(project / "params.yaml"), "--write-deps"]) == 2
    assert "train.lr" in capsys.readouterr().err
    assert (project / "dvc.yaml").read_text() == before


def test_a_deployment_run_refuses_and_a_local_run_declares(project, monkeypatch, capsys):
    from flows import pipeline as pipeline_mod
    from slimline.overrides import OverrideError, validate

    with pytest.raises(OverrideError, match=r"prepare: photos.*slimline check --write-deps"):
        validate(project, {})  # what a deployment's run does first: dvc.yaml stays as it is
    assert "photos" not in prepare_deps(project)

    seen = {}
    monkeypatch.setattr(pipeline_mod, "pipeline", lambda **kw: seen.update(kw) or [])
    monkeypatch.setattr("flows.reports.print_summary", lambda root, results: None)
    assert pipeline_mod.main(["--root", str(project), "-S", "train.epochs=3"]) == 0
    assert "dvc.yaml: prepare now depends on photos" in capsys.readouterr().out
    assert "photos" in prepare_deps(project)
    assert seen["root"] == str(project.resolve()) and seen["overrides"] == {"train.epochs": 3}


def test_a_runtime_that_cannot_run_here_is_refused_before_any_work(tmp_path, monkeypatch):
    import onnxruntime

    # ONNX Runtime's CPU build, whatever is installed here: no CUDA provider
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    raw = {"evaluate": {"runtimes": ["onnxruntime", "onnxruntime-cuda"]}}
    msg = check.problems(raw, tmp_path)
    assert msg.startswith("evaluate.runtimes: runtime onnxruntime-cuda needs ONNX Runtime's "
                          "CUDAExecutionProvider") and "make setup-gpu" in msg
    # the CPU runtimes run here: nothing stops the run (tmp_path has no dvc.yaml: no deps to declare)
    assert check.problems({"evaluate": {"runtimes": ["onnxruntime", "openvino"]}}, tmp_path) is None
