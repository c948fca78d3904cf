"""quantize writes every variant and no measured number into models/onnx; evaluate's quantize
gate then keeps a variant that does not match its fp32 source from being selected.

The stages run in process on a tiny CNN whose static int8 form is broken on purpose (one
huge weight on an input that is always zero: fp32 computes the same, per-channel int8
rounds that channel's other weights to zero)."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from slimline.params import parse_params

SHAPE = (1, 12, 12)
MANIFEST_KEYS = {"name", "file", "source", "source_dir", "quantization", "opset", "fp32_nodes"}
PARAMS = {
    "train": {"num_threads": 1},
    "prune": {"methods": ["layer"]},
    "quantize": {"calibration_batches": 2, "calibration_batch_size": 16, "min_agreement": 0.99,
                 "max_accuracy_drop": 0.02, "max_excluded": 0, "sensitivity_scan": False},
    # only the gate may reject: the baseline budget is wide open
    "evaluate": {"warmup": 0, "repeats": 10, "rounds": 5, "max_accuracy_drop": 0.99},
}


def broken_for_static_int8():
    """A seeded CNN (4 classes) that static int8 breaks, and its spec."""
    from slimline.model import ModelSpec, build_model
    from slimline.params import Structure

    torch.manual_seed(0)
    spec = ModelSpec(structure=Structure(conv_channels=[4, 8], hidden=[16], pool=1).model_dump(),
                     input_shape=SHAPE, num_classes=4, mean=(0.0,), std=(1.0,))
    model = build_model(spec).eval()
    conv1, conv2 = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        conv1.weight[0], conv1.bias[0] = 0.0, -1.0  # channel 0 is dead after ReLU
        conv2.weight[:, 0, 0, 0] = 1e3  # ... and conv2 reads it with a huge weight
    return model, spec


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A folder after quantize on the broken CNN: data/prepared, models/, models/onnx, reports/.
    Labels are the fp32 model's own predictions, so fp32 scores 100%."""
    from slimline.data.dataset import Prepared, save_prepared
    from slimline.model import save_model
    from slimline.paths import NOT_APPLICABLE
    from tasks.quantize import quantize

    root = tmp_path_factory.mktemp("quantize_gate")
    model, spec = broken_for_static_int8()
    rng = np.random.default_rng(0)
    x = rng.normal(0, 3, (160, *SHAPE)).astype(np.float32)
    with torch.no_grad():  # centre the logits: predictions spread over the classes
        last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
        last.bias -= model(torch.from_numpy(x)).mean(0)
        y = model(torch.from_numpy(x)).argmax(1).numpy()
    splits = {"train": (x[:64], y[:64]), "val": (x[64:112], y[64:112]), "test": (x[112:], y[112:])}
    save_prepared(Prepared(splits, {"input_shape": list(SHAPE), "num_classes": 4, "mean": [0.0], "std": [1.0],
                                    "sizes": {k: 48 if k != "train" else 64 for k in splits}}),
                  root / "data/prepared")
    save_model(model, spec, root / "models/baseline")
    (root / "models/pruned/layer").mkdir(parents=True)
    (root / "models/pruned/layer" / NOT_APPLICABLE).write_text("{}")  # the layer method found nothing
    mp = pytest.MonkeyPatch()
    mp.chdir(root)  # the stages write reports/ relative to the project root
    try:
        quantize(parse_params(PARAMS), argparse.Namespace(data=root / "data/prepared", models=root / "models",
                                                          out=root / "models/onnx"))
        yield root, mp
    finally:
        mp.undo()


def test_quantize_writes_every_variant_and_no_measured_number(project):
    root, _ = project
    manifest = json.loads((root / "models/onnx/manifest.json").read_text())
    assert set(manifest) == {"variants", "calibration"}
    names = [e["name"] for e in manifest["variants"]]
    assert names == ["baseline", "baseline.int8_dynamic", "baseline.int8_static", "baseline.fp16"]
    for e in manifest["variants"]:
        assert set(e) <= MANIFEST_KEYS, f"measured keys in the manifest: {set(e) - MANIFEST_KEYS}"
        assert (root / "models/onnx" / e["file"]).exists()
    # static int8 misses the budget, and is written all the same; the report holds its numbers
    report = json.loads((root / "reports/quantize.json").read_text())
    assert report["shortfall"] == ["baseline.int8_static"]
    rows = {r["variant"]: r for r in report["variants"]}
    static = rows["baseline.int8_static"]
    assert static["agreement"] < PARAMS["quantize"]["min_agreement"] and static["val_drop_pt"] > 2.0
    assert "quantize.max_accuracy_drop 2.00 pt" in static["shortfall"]
    assert rows["baseline"]["shortfall"] == "" and rows["baseline"]["agreement"] == 1.0


def test_evaluate_gate_marks_the_variant_and_never_selects_it(project):
    from tasks.evaluate import evaluate

    root, _ = project
    params = parse_params(PARAMS)
    evaluate(params, argparse.Namespace(data=root / "data/prepared", onnx=root / "models/onnx",
                                        qat=root / "models/qat", ship=root / "models/ship",
                                        incumbent=root / "no-incumbent.json"))
    report = json.loads((root / "reports/evaluate.json").read_text())
    by = {v["name"]: v for v in report["variants"]}
    runtimes = params.evaluate.runtimes  # every variant on each: onnxruntime and OpenVINO
    assert list(report["runtimes"]) == runtimes == ["onnxruntime", "openvino"] and report["skipped"] == []
    assert set(by) == {f"{n}@{r}" for n in ("baseline", "baseline.int8_dynamic", "baseline.int8_static",
                                            "baseline.fp16") for r in runtimes}
    for r in runtimes:  # the gate is judged on each pair's own runtime, against its fp32 source there
        static = by[f"baseline.int8_static@{r}"]
        assert not static["quantize_gate_passed"] and not static["within_budget"], r
        misses = " ".join(static["budget_misses"])
        assert "quantize.min_agreement 0.99" in misses and "quantize.max_accuracy_drop 2.00 pt" in misses, r
        assert static["agreement_with_fp32"] < 0.99 and static["val_drop_vs_fp32"] > 0.02, r
        base = by[f"baseline@{r}"]
        assert base["agreement_with_fp32"] == 1.0 and base["quantize_gate_passed"], r
    failed = {n for n, v in by.items() if not v["quantize_gate_passed"]}
    assert report["selected"] is not None and report["selected"] not in failed
    md = (root / "reports/evaluate.md").read_text()
    assert "fail it and are never selected" in md
    for r in runtimes:
        assert f"- `baseline.int8_static@{r}`: top-1 agreement" in md
