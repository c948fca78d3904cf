"""A model and data the user brings, end to end through the flow (each stage through `dvc
repro`): an image folder of PNGs
of mixed sizes and modes, a python: model from a file in the project (BatchNorm, depthwise
conv, skip connections), a student derived from it, every pruning method, quantization and
the selection; then an edit to the model's file reruns exactly the stages that build it."""
import json
import sys
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from tests.support.project import ROOT, dvc, sh, update_params

MODEL = "python:slimline.examples.tiny_resnet:build"


def write_images(root, per_class=24):
    """Three classes a small net can tell apart (a bright bar: horizontal, vertical, none),
    as PNGs of three sizes, grayscale and RGB."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(("horizontal", "vertical", "none")):
        for i in range(per_class):
            h, w = (20, 20) if i % 3 == 0 else (24, 18) if i % 3 == 1 else (16, 16)
            img = rng.integers(0, 60, (h, w), dtype=np.uint8)
            if c == 0:
                img[h // 2 - 2:h // 2 + 2, :] = 230
            elif c == 1:
                img[:, w // 2 - 2:w // 2 + 2] = 230
            path = root / name / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            (Image.fromarray(img).convert("RGB") if i % 2 else Image.fromarray(img)).save(path)


def test_own_data_python_model_and_derived_student_through_the_flow(prefect_api, pipeline_copy):
    from flows.pipeline import pipeline

    root = pipeline_copy
    write_images(root / "images")
    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw["data"] = {**raw["data"], "source": "imagefolder", "path": "images", "image_size": [16, 16],
                   "channels": 1, "limit": None, "min_per_class": 5}
    raw["baseline"] = {"model": MODEL, "kwargs": {"width": 16, "blocks": 2}, "weights": None,
                       "skip_training": False}
    raw["student"] = {"derive": {"from": "baseline", "width": 0.5}}
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    # structured pruning and the zoo models are covered in tests/unit/test_zoo.py
    # QAT (on in the tiny build) runs on tiny_resnet in tests/unit/test_qat.py
    update_params(root, {"train": {"epochs": 1}, "prune": {"methods": ["layer"]},
                         "quantize": {"variants": ["dynamic"]}, "qat": {"enabled": False, "pruned": []}})
    check = sh([sys.executable, "-m", "slimline.check"], root, check=False)
    assert check.returncode == 2 and "slimline/examples/tiny_resnet.py" in check.stderr  # not deps yet
    assert "prepare: images" in check.stderr
    sh([sys.executable, "-m", "slimline.codedeps", "--write"], root)

    # the flow checks the whole file first, as `slimline check` does (its exit 0 once the
    # deps are declared: test_installed_console_script_... below)
    results = pipeline(root=str(root), push=False)
    assert {r["stage"]: r["outcome"] for r in results}["prune@layer"] == "ran"
    assert dvc("status", cwd=root).stdout.strip().endswith("up to date.")  # dvc.lock is true
    prepared = json.loads((root / "reports/prepare.json").read_text())
    assert prepared["input_shape"] == [1, 16, 16] and prepared["num_classes"] == 3
    base = json.loads((root / "reports/train_baseline.json").read_text())
    assert base["model"] == MODEL and base["epochs"] == 1
    student = json.loads((root / "reports/distill.json").read_text())
    assert student["params"] < base["params"] / 2  # width 0.5: about a quarter, classifier whole
    assert student["features"] == [["1.4", "1.4"]]  # feature KD (tiny config): the last residual block
    layer = json.loads((root / "reports/prune_layer.json").read_text())
    assert [r["removed"] for r in layer["ablation"]] == ["1.3", "1.4"]  # the two residual blocks
    evaluate = json.loads((root / "reports/evaluate.json").read_text())
    names = {v["variant"] for v in evaluate["variants"]}
    assert {"baseline", "student", "student_scratch", "prune_layer", "student.int8_dynamic"} <= names
    assert json.loads((root / "models/ship/manifest.json").read_text())["selected"]
    assert json.loads((root / "models/ship/labels.json").read_text()) == ["horizontal", "none", "vertical"]
    out = sh([sys.executable, "-m", "slimline.predict", "images/vertical/1.png", "--json"], root).stdout
    assert json.loads(out)["label"] in ("horizontal", "none", "vertical")  # an RGB 24x18 image, resized

    # Editing the model's file reruns the stages that build it, and only those.
    src = root / "slimline/examples/tiny_resnet.py"
    src.write_text(src.read_text() + "\n# an edit\n")
    status = yaml.safe_load(dvc("status", "--json", cwd=root).stdout)
    assert set(status) == {"train_baseline", "distill", "prune@layer", "quantize", "qat@student", "evaluate"}


def test_installed_console_script_imports_a_model_module_from_the_project_root(tmp_path):
    """The `slimline` console script starts with the venv's bin/ on sys.path, not the project:
    a model module kept in the project root (outside the package) must import there as it
    does in the stages. --write-deps declares its file; the preflight builds, derives and
    exports the baseline and the student from it."""
    from tests.support.project import copy_project

    root = copy_project(tmp_path / "proj")
    (root / "mymodels").mkdir()
    (root / "mymodels" / "__init__.py").write_text("")
    # the packaged example's code, as a user's own file that the installed package cannot see
    src = (ROOT / "slimline/examples/tiny_resnet.py").read_text()
    (root / "mymodels" / "net.py").write_text(src)
    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw["baseline"] = {"model": "python:mymodels.net:build", "kwargs": {"width": 8, "blocks": 1}}
    raw["student"] = {"derive": {"from": "baseline", "width": 0.5}}
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    script = str(Path(sys.executable).parent / "slimline")
    first = sh([script, "check", "--write-deps"], root, check=False)
    assert first.returncode == 0, first.stderr
    assert "dvc.yaml: train_baseline now depends on mymodels/net.py" in first.stdout
    assert "params.yaml: OK" in first.stdout
    deps = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]["distill"]["deps"]
    assert "mymodels/net.py" in deps
    # run from a subfolder: the root is found by its dvc.yaml
    (root / "notes").mkdir()
    again = sh([script, "check", "../params.yaml"], root / "notes", check=False)
    assert again.returncode == 0 and "OK" in again.stdout, again.stderr
