"""`dvc repro` end to end in temporary clones: outputs, no-op reruns, bit-identical hashes."""
import json

import pytest
import yaml

from tests.support.numbers import numbers_not_in
from tests.support.project import dvc, lock_outs, update_params
from tests.support.tiny import LOCK, REFRESH, TINY, portable_hashes


def test_tiny_repro_produces_every_output(tiny_pipeline):
    for path in ["data/prepared/train.safetensors", "data/prepared/meta.json",
                 "models/baseline/model.safetensors", "models/baseline/structure.json",
                 "models/student/model.safetensors", "models/student_scratch/structure.json",
                 "models/pruned/unstructured/model.safetensors", "models/pruned/structured/structure.json",
                 "models/pruned/layer/structure.json", "models/onnx/manifest.json",
                 "models/onnx/baseline.onnx", "models/qat/student/student.int8_qat.onnx",
                 "models/qat/prune_structured/prune_structured.int8_qat.onnx", "reports/qat_student.json",
                 "models/ship/manifest.json", "reports/prepare.md", "reports/train_baseline.md",
                 "reports/distill.json", "reports/prune_layer.json", "reports/quantize.json",
                 "reports/evaluate.json", "reports/evaluate.md", "reports/pareto_latency.png",
                 "reports/pareto_bytes.png", "dvclive/train_baseline/plots/metrics/val/acc.tsv"]:
        assert (tiny_pipeline / path).is_file(), path
    report = json.loads((tiny_pipeline / "reports/train_baseline.json").read_text())
    assert report["epochs"] == 2 and 0.0 <= report["test_accuracy"] <= 1.0
    assert "train_seconds" not in report  # timings stay out of the tracked metrics
    prep = json.loads((tiny_pipeline / "reports/prepare.json").read_text())
    assert sum(prep["sizes"].values()) == 400 and prep["validation"]["success"]
    shown = dvc("metrics", "show", "--json", cwd=tiny_pipeline).stdout
    assert "test_accuracy" in shown and "kd_gain_test" in shown
    # distill.features: auto (the tiny config): the two conv stages paired, three runs reported
    kd = json.loads((tiny_pipeline / "reports/distill.json").read_text())
    assert kd["features"] == [["0.1", "0.1"], ["0.4", "0.4"]]
    assert {"logit_kd_test_accuracy", "feature_gain_test", "feature_weight"} <= set(kd)
    assert "| logit KD only |" in (tiny_pipeline / "reports/distill.md").read_text()
    # the logit-KD ablation leaves neither a model nor curves behind
    assert sorted(p.name for p in (tiny_pipeline / "models").iterdir()) == [
        ".gitignore", "baseline", "incumbent.json", "onnx", "pruned", "qat", "ship", "student",
        "student_scratch"]
    assert sorted(p.name for p in (tiny_pipeline / "dvclive").iterdir()) == [
        "distill", "distill_scratch", "train_baseline"]


def test_run_records_name_the_cpu_and_the_numerics(tiny_pipeline):
    from slimline.numerics import PROMISE, cpu_info

    cpu = cpu_info()
    for stage in ("train_baseline", "distill", "prune_structured", "quantize", "qat_prune_structured"):
        run = json.loads((tiny_pipeline / f"reports/{stage}.run.json").read_text())
        assert run["cpu"] == cpu["model"] and run["cpu_isa"] == " ".join(cpu["isa"]), stage
        assert run["numerics"] == "portable" and run["numerics_bit_identical_across_cpus"] is True, stage
        assert run["numerics_aten_capability"] == "AVX2" and run["numerics_onednn_conv"] is False
        assert run["numerics_nnpack_conv"] is False and run["numerics_portable_dropout"] is True
        assert PROMISE in (tiny_pipeline / f"reports/{stage}.md").read_text(), stage


def test_qat_reports_say_which_tensors_training_did_not_simulate(tiny_pipeline):
    """The built-in CNN's QAT simulates every tensor its int8 file quantizes: the reports say so."""
    for name in ("student", "prune_structured"):
        report = json.loads((tiny_pipeline / f"reports/qat_{name}.json").read_text())
        assert report["variant"] == f"{name}.int8_qat" and report["unsimulated"] == [], report
        assert "Not simulated in training" not in (tiny_pipeline / f"reports/qat_{name}.md").read_text()


REQUIRED = {"name", "variant", "runtime", "precision", "accuracy", "params", "nonzero_params", "bytes",
            "gzip_bytes", "flops", "p50_ms_b1", "p95_ms_b1", "throughput_b256", "torch_p50_ms_b1"}


def test_evaluate_json_schema(tiny_pipeline):
    report = json.loads((tiny_pipeline / "reports/evaluate.json").read_text())
    assert {"baseline", "selected", "variants", "runtimes", "skipped", "hardware", "selection"} <= set(report)
    assert report["baseline"] == "baseline@onnxruntime"  # the reference runtime: the first listed
    names = [v["name"] for v in report["variants"]]
    assert len(names) == len(set(names))
    # every model of the DAG, and each shipped-able one in every quantized form, on both runtimes
    assert set(report["runtimes"]) == {"onnxruntime", "openvino"} and report["skipped"] == []
    for name in ["baseline", "student", "student_scratch", "prune_unstructured", "prune_structured",
                 "prune_layer", "baseline.int8_dynamic", "baseline.int8_static", "baseline.fp16",
                 "student.int8_qat", "prune_structured.int8_qat"]:
        assert {f"{name}@onnxruntime", f"{name}@openvino"} <= set(names)
    assert report["selected"] is None or report["selected"] in names
    for v in report["variants"]:
        assert REQUIRED <= set(v), REQUIRED - set(v)
        assert v["name"] == f"{v['variant']}@{v['runtime']}"
        assert v["precision"] == ("f32" if v["runtime"] == "openvino" else "as stored")
        assert 0 <= v["accuracy"] <= 1 and v["accuracy_ci95"][0] <= v["accuracy"] <= v["accuracy_ci95"][1]
        folder = f"models/qat/{v['source']}" if v["quantization"] == "qat" else "models/onnx"
        assert v["bytes"] == (tiny_pipeline / folder / f"{v['variant']}.onnx").stat().st_size
        assert v["p50_ms_b1"] > 0 and v["p99_ms_b1"] >= v["p95_ms_b1"] >= v["p50_ms_b1"]
        rounds = v["p50_ms_b1_rounds"]  # every round kept; the p50 is their median
        assert len(rounds) == 5 and v["p50_ms_b1"] == sorted(rounds)[2]
        # each pair over its own runtime's floor
        assert v["floor_multiple"] == v["p50_ms_b1"] / report["runtimes"][v["runtime"]]["floor_p50_ms"]
        assert v["flops"] > 0  # a quantized form does its fp32 source's operations
        assert (v["torch_p50_ms_b1"] is not None) == (v["quantization"] == "fp32")
        # the quantize gate, measured by evaluate against the variant's own fp32 source
        assert 0 <= v["agreement_with_fp32"] <= 1 and isinstance(v["quantize_gate_passed"], bool)
        if v["quantization"] == "fp32":
            assert (v["agreement_with_fp32"] == 1.0 and v["val_drop_vs_fp32"] == 0.0
                    and v["quantize_gate_passed"])
        assert v["within_budget"] == (not v["budget_misses"])
        if not v["quantize_gate_passed"]:
            assert not v["within_budget"] and any("quantize." in r for r in v["budget_misses"])
    hw = report["hardware"]
    assert {"cpu", "isa", "cores", "threads", "onnxruntime", "torch", "gpu"} <= set(hw)
    for info in report["runtimes"].values():
        assert 0 < info["floor_p50_ms"] and len(info["floor_p50_ms_rounds"]) == 5
        assert info["version"] and info["settings"]
    sel = report["selection"]
    assert sel["selected"] == report["selected"] and sel["why"]
    if report["selected"]:
        lo, hi = sel["latency_ratio_range"]
        assert lo <= sel["latency_ratio"] <= hi
    pruned = {v["name"]: v for v in report["variants"]}["prune_unstructured@onnxruntime"]
    assert pruned["nonzero_params"] < 0.5 * pruned["params"]  # 75% of weights gone


def test_ship_bundle_matches_its_torch_source(tiny_pipeline):
    import numpy as np
    import torch

    from slimline.data.dataset import load_prepared
    from slimline.model import load_model
    from slimline.predict import Bundle

    ship = tiny_pipeline / "models/ship"
    manifest = json.loads((ship / "manifest.json").read_text())
    if manifest["selected"] is None:
        pytest.skip(f"nothing selected on the tiny config: {manifest['reason']}")
    onnx_manifest = json.loads((tiny_pipeline / "models/onnx/manifest.json").read_text())
    entry = next(e for e in onnx_manifest["variants"] if e["name"] == manifest["variant"])
    # the bundle runs on the runtime it won on (OpenVINO: its IR, with the ONNX file beside it)
    assert manifest["selected"] == f"{manifest['variant']}@{manifest['runtime']['name']}"
    assert (ship / "model.onnx").is_file() and ("openvino" in manifest["files"]) == \
        manifest["runtime"]["name"].startswith("openvino")
    model, _ = load_model(tiny_pipeline / entry["source_dir"])
    x, _ = load_prepared(tiny_pipeline / "data/prepared").splits["test"]
    x = x.astype(np.float32)
    ours = np.array([int(label) for label, _ in Bundle(ship).predict(x)])
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).argmax(1).numpy()
    agree = (ours == ref).mean()
    # a quantized variant ships only if evaluate's quantize gate found it agreeing with its fp32
    # source (whose top-1 is torch's on test: quantize checks the export) on quantize.min_agreement
    assert agree == 1.0 if entry["quantization"] == "fp32" else agree >= TINY["quantize"]["min_agreement"]
    assert set(entry) <= {"name", "file", "source", "source_dir", "quantization", "opset", "fp32_nodes"}


def test_model_card_cites_only_evaluate_json_and_dvc_hashes(tiny_pipeline):
    report = json.loads((tiny_pipeline / "reports/evaluate.json").read_text())
    card = (tiny_pipeline / "models/ship/MODEL_CARD.md").read_text()
    chosen = next(v for v in report["variants"] if v["name"] == report["selected"])
    assert card.startswith(f"# Model card: `{chosen['variant']}` on {chosen['runtime']}")
    assert numbers_not_in(card, report) == []
    # the lineage hashes are DVC's own: the same as dvc.lock's for those outputs
    outs = lock_outs(tiny_pipeline)
    lin = report["lineage"]
    for item in [lin["data"], *lin["models"]]:
        assert outs[item["path"]] == item["md5"], item
        assert f"`{item['path']}` md5 `{item['md5']}`" in card


def test_second_repro_runs_nothing(pipeline_copy):
    out = dvc("repro", cwd=pipeline_copy).stdout
    assert "Running stage" not in out
    assert dvc("status", cwd=pipeline_copy).stdout.strip().endswith("up to date.")


# Which stages a params change reruns is dvc.yaml's `params` and deps, which the toy
# project keeps as they are (tests/support/toy.py): its stages take a fraction of a second.
def test_changing_a_train_key_does_not_rerun_prepare(toy_copy):
    update_params(toy_copy, {"train": {"lr": 0.02}})
    out = dvc("repro", "train_baseline", cwd=toy_copy).stdout
    assert "Running stage 'train_baseline'" in out
    assert "Running stage 'prepare'" not in out


def test_changing_an_evaluate_key_reruns_only_evaluate(toy_copy):
    update_params(toy_copy, {"evaluate": {"objective": "size"}})
    out = dvc("repro", cwd=toy_copy).stdout
    assert out.count("Running stage") == 1 and "Running stage 'evaluate'" in out


def test_resume_folder_removed_after_success(tiny_pipeline):
    resume = tiny_pipeline / ".slimline" / "resume"
    assert not resume.exists() or not any(resume.iterdir())


def test_tiny_build_reproduces_the_committed_tiny_lock(tiny_pipeline):
    """Every stage's data and models, as this run built them, have the hashes of
    tests/tiny.lock: determinism end to end, across runs and CPUs, at no extra cost."""
    committed = yaml.safe_load(LOCK.read_text())
    built = portable_hashes(tiny_pipeline)
    assert built == committed, (
        "the tiny build's outputs differ from tests/tiny.lock: "
        + ", ".join(p for p in sorted(set(built) | set(committed)) if built.get(p) != committed.get(p))
        + f". If your change is meant to alter them, refresh it: {REFRESH}")
