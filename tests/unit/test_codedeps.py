"""dvc.yaml's code deps are each stage's import closure, no more and no less, plus the
files params.yaml brings (a python: model's source, imported weights)."""
import pytest
import yaml

from slimline.codedeps import closure, code_files, dvc_deps, stage_modules
from slimline.codedeps_doc import COMMAND, DOC_PATH, current, render, rows, stage_names
from tests.support.project import ROOT

CODE = ("tasks/", "slimline/", "flows/")


def declared_code_deps(stage: dict) -> list[str]:
    deps = (stage.get("do") or stage)["deps"]
    return sorted(d for d in deps if d.startswith(CODE))


def test_every_stage_declares_exactly_the_code_it_imports():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    modules = stage_modules()
    assert set(modules) == set(stages)
    for name, stage in stages.items():
        assert declared_code_deps(stage) == dvc_deps(modules[name]), (
            f"dvc.yaml stage {name}: code deps drifted from its imports; "
            f"`python -m slimline.codedeps {modules[name]}` prints the right list")


def test_closure_follows_imports_inside_functions_and_stops_at_the_project():
    prepare = code_files("tasks.prepare")
    # prepare imports sources and validate inside its function body
    assert {"slimline/data/sources.py", "slimline/data/validate.py", "tasks/prepare.py"} <= set(prepare)
    assert all(p.startswith(("tasks/", "slimline/")) for p in prepare)
    # pruning reuses the KD loss from the library, not from the distill stage's script
    assert "tasks/distill.py" not in code_files("tasks.prune")
    assert "slimline/compress/kd.py" in code_files("tasks.prune")
    # search code is in no stage's closure: editing it reruns nothing
    for module in set(stage_modules().values()):
        assert not any(p.startswith("slimline/search/") for p in code_files(module)), module


def test_resume_keys_cover_the_same_code():
    import tasks.distill
    import tasks.train_baseline

    assert tasks.train_baseline.CODE_DEPS == code_files("tasks.train_baseline")
    assert tasks.distill.CODE_DEPS == code_files("tasks.distill")
    assert all(not p.startswith("/") for p in tasks.distill.CODE_DEPS)


def test_folder_deps_stand_for_all_their_code():
    deps = dvc_deps("tasks.prune")
    files = {p.relative_to(ROOT).as_posix() for p in closure("tasks.prune")}
    for dep in deps:
        if (ROOT / dep).is_dir():
            inside = {p.relative_to(ROOT).as_posix() for p in (ROOT / dep).rglob("*.py")
                      if "__pycache__" not in p.parts and p.read_text().strip()}
            assert inside <= files, dep


def test_user_files_become_deps_of_exactly_the_stages_that_use_them(tmp_path):
    import shutil

    from slimline.codedeps import MARK, read_params, undeclared, write

    dvc_yaml, params = tmp_path / "dvc.yaml", tmp_path / "params.yaml"
    shutil.copy(ROOT / "dvc.yaml", dvc_yaml)
    raw = read_params(ROOT / "params.yaml")
    # the user's module, found where the stages import it from: the project root (dvc.yaml's folder)
    (tmp_path / "mymodels").mkdir()
    (tmp_path / "mymodels" / "net.py").write_text("def build(num_classes, in_channels): ...\n")
    raw["baseline"] = {"model": "python:mymodels.net:build", "weights": "weights/base.pt"}
    params.write_text(yaml.safe_dump(raw))
    assert undeclared("train_baseline", raw, dvc_yaml) == ["mymodels/net.py", "weights/base.pt"]

    assert write(dvc_yaml, params) is True
    assert write(dvc_yaml, params) is False  # idempotent
    stages = yaml.safe_load(dvc_yaml.read_text())["stages"]
    deps = {name: (s.get("do") or s)["deps"] for name, s in stages.items()}
    src = "mymodels/net.py"
    assert "weights/base.pt" in deps["train_baseline"] and src in deps["train_baseline"]
    for stage in ("distill", "prune", "quantize", "evaluate"):  # they build the baseline from its spec
        assert src in deps[stage] and "weights/base.pt" not in deps[stage], stage
    assert src not in deps["prepare"]
    assert deps["train_baseline"][0] == "data/prepared"  # the author's deps above the mark stay
    assert dvc_yaml.read_text().count(MARK) == len(stages)
    assert all(not undeclared(s, raw, dvc_yaml) for s in stages)


def test_a_stage_refuses_to_run_with_an_undeclared_user_file(tmp_path):
    import shutil

    from slimline.errors import StageError
    from slimline.stage import check_declared

    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["student"]["weights"] = "w/student.safetensors"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    check_declared("train_baseline", tmp_path / "params.yaml", tmp_path / "dvc.yaml")  # not its file
    with pytest.raises(StageError, match=r"w/student.safetensors.*stage distill.*codedeps --write"):
        check_declared("distill", tmp_path / "params.yaml", tmp_path / "dvc.yaml")


def test_training_stages_run_no_quantization_or_openvino_code_and_evaluate_no_pruning_code():
    # training times its run record on ONNX Runtime only: OpenVINO code reruns evaluate alone
    for module in ("tasks.train_baseline", "tasks.distill", "tasks.prune", "tasks.quantize"):
        files = set(code_files(module))
        assert not {"slimline/runtime/openvino.py", "slimline/runtime/registry.py"} & files, module
        if module != "tasks.quantize":
            assert "slimline/compress/quantization.py" not in files, module
    evaluate = code_files("tasks.evaluate")
    assert {"slimline/runtime/openvino.py", "slimline/runtime/registry.py"} <= set(evaluate)
    assert not {"slimline/compress/pruning.py", "slimline/compress/pruning_ratios.py"} & set(evaluate)


def test_design_md_stage_table_is_current():
    assert current(DOC_PATH.read_text()) == render(), \
        f"docs/design.md's stage table is stale: run `{COMMAND}` (or `make docs`)"


def test_stage_table_rows_cover_every_stages_library_code():
    table = dict(rows())
    names = stage_names()
    for stage, module in stage_modules().items():
        for f in code_files(module):
            if f.startswith("slimline/"):
                row = next(r for r in table if f == r or (r.endswith("/") and f.startswith(r)))
                assert set(names[stage]) <= set(table[row]), (f, stage)
    # no row inside a folder row: each file has one row
    assert not any(r != s and s.endswith("/") and r.startswith(s) for r in table for s in table)


def test_stage_names_expand_foreach_and_matrix_as_dvc_names_them(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"prune": {"methods": ["layer", "structured"]}}))
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {
        "prepare": {"cmd": "python -m tasks.prepare"},
        "prune": {"foreach": "${prune.methods}", "do": {"cmd": "python -m tasks.prune --method ${item}"}},
        "by_key": {"foreach": {"a": 1, "b": 2}, "do": {"cmd": "python -m tasks.x"}},
        "composite": {"foreach": [{"x": 1}, {"x": 2}], "do": {"cmd": "python -m tasks.x"}},
        "grid": {"matrix": {"opt": ["sgd", "adam"], "bn": [True], "cfg": [{"k": 1}]},
                 "cmd": "python -m tasks.x"},
    }}, sort_keys=False))
    assert stage_names(tmp_path / "dvc.yaml", tmp_path / "params.yaml") == {
        "prepare": ["prepare"], "prune": ["prune@layer", "prune@structured"],
        "by_key": ["by_key@a", "by_key@b"], "composite": ["composite@0", "composite@1"],
        "grid": ["grid@sgd-true-cfg0", "grid@adam-true-cfg0"]}
