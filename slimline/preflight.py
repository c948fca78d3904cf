"""Preflight for the models params.yaml asks for, before any stage trains.

For the baseline and the student (derived or not): build it for the data's shape, run one
forward pass, export it to ONNX (a dry run, in memory), and build Torch-Pruning's
dependency graph. A failure names the section, the spec, the step and what to change.

`slimline check` runs it. The outcome is cached under .slimline/preflight/ by a hash of
what it depends on (the specs, the input shape, the project's code), so a no-op
`make run` does not pay for importing torch again.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

CACHE = Path(".slimline/preflight")


def input_shape(raw: dict, root: Path) -> tuple[tuple[int, int, int], int] | None:
    """(C, H, W) and the class count the models will be built for: data/prepared's when it
    exists, else what the data params say; None when only prepare can know."""
    meta = root / "data" / "prepared" / "meta.json"
    if meta.exists():
        m = json.loads(meta.read_text())
        return tuple(m["input_shape"]), int(m["num_classes"])
    data = raw.get("data") or {}
    classes = data.get("num_classes") or 10
    if data.get("source", "mnist5k") == "mnist5k":
        return (1, 28, 28), 10
    if data.get("source") == "imagefolder" and data.get("image_size") and data.get("channels"):
        return (int(data["channels"]), *map(int, data["image_size"])), int(classes)
    return None


def _key(raw: dict, shape) -> str:
    from slimline.codedeps import ROOT

    h = hashlib.sha256(json.dumps({"baseline": raw.get("baseline"), "student": raw.get("student"),
                                   "shape": shape}, sort_keys=True, default=str).encode())
    for name in ("model.py", "zoo.py", "compress/pruning.py", "compress/onnx_tools.py", "preflight.py"):
        h.update((ROOT / "slimline" / name).read_bytes())
    for section in ("baseline", "student"):
        model = str((raw.get(section) or {}).get("model", "cnn"))
        if model.startswith("python:"):
            from slimline.codedeps import python_source

            src = python_source(model, Path.cwd())
            if src:
                h.update((Path.cwd() / src).read_bytes())
    return h.hexdigest()[:24]


def check_models(raw: dict, root: Path = Path(".")) -> list[str]:
    """Problems with the models, one line each naming what to change; [] when all pass."""
    found = input_shape(raw, root)
    if found is None:
        return []  # an idx/npz source, not prepared yet: the first training stage checks it
    shape, classes = found
    if all(str((raw.get(s) or {}).get("model", "cnn")) == "cnn" and not (raw.get(s) or {}).get("derive")
           for s in ("baseline", "student")):
        return []  # the built-in cnn: the params schema already checked its shapes
    key = _key(raw, [shape, classes])
    done = root / CACHE / f"{key}.ok"
    if done.exists():
        return []
    problems = _run(raw, shape, classes)
    if not problems:
        done.parent.mkdir(parents=True, exist_ok=True)
        done.write_text("")
    return problems


def _run(raw: dict, shape, classes) -> list[str]:
    import tempfile
    import warnings

    import torch

    from slimline.compress.onnx_tools import export_onnx
    from slimline.compress.student import student_plan
    from slimline.errors import StageError
    from slimline.model import build_model
    from slimline.params import parse_params
    from slimline.training.trainer import network_spec

    params = parse_params(raw)
    base, student = params.baseline, params.student
    spec = network_spec(base, shape, classes, (0.0,) * shape[0], (1.0,) * shape[0])
    plans = [("baseline", base.model, spec, None)]
    if student.derive is not None or student.model != "cnn":
        # As distill builds it; imported student weights are the stage's to load.
        s, init = student_plan(student, spec)
        what = (f"derive from {base.model} at width {student.derive.width:g}" if student.derive
                else student.model)
        plans.append(("student", what, s, init if student.derive else None))
    problems = []
    example = torch.zeros(2, *shape)
    for section, what, s, init in plans:
        step = "build"
        try:
            model = build_model(s).eval()
            if init is not None:
                step = "derive"
                model = init(model).eval()
            step = f"forward on a {tuple(example.shape)} batch"
            with torch.no_grad():
                out = model(example)
            if tuple(out.shape) != (2, classes):
                raise StageError(f"it returns shape {tuple(out.shape)}, not (batch, {classes}) logits")
            step = "ONNX export"
            with warnings.catch_warnings(), tempfile.TemporaryDirectory() as tmp:
                warnings.simplefilter("ignore")
                export_onnx(model, shape, Path(tmp) / "model.onnx")
            step = "Torch-Pruning dependency graph"
            import torch_pruning as tp

            tp.DependencyGraph().build_dependency(model, example_inputs=example)
        except Exception as err:  # noqa: BLE001 - every failure becomes one line for the user
            msg = str(err).splitlines()[0] if str(err) else type(err).__name__
            problems.append(f"{section} ({what}): {step} failed: {type(err).__name__}: {msg[:300]}. "
                            f"Change the model (see docs/own-model.md) or its kwargs")
    return problems
