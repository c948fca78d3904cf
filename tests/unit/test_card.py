"""The model card: rendered from evaluate.json alone, lineage rules per kind of source."""
from __future__ import annotations

import pytest

from slimline.evaluation.card import _isa, path_of, render
from slimline.params import Params
from tests.support.numbers import numbers_not_in


def variant(name, quant, acc, p50, size, runtime="onnxruntime", precision="as stored"):
    """One (variant, runtime) record as evaluate writes it."""
    return {"name": f"{name}@{runtime}", "variant": name, "runtime": runtime, "precision": precision,
            "source": name.split(".")[0], "quantization": quant, "accuracy": acc,
            "accuracy_ci95": [acc - 0.011, acc + 0.007], "val_accuracy": acc + 0.004,
            "val_ci95": [acc - 0.013, acc + 0.012], "bytes": size, "flops": 402_368,
            "p50_ms_b1": p50, "p95_ms_b1": p50 * 1.21, "p99_ms_b1": p50 * 1.87,
            "p50_ms_b1_rounds": [p50 * f for f in (1.0, 1.1, 0.97, 1.02, 0.99)],
            "throughput_b256": 123_456.7, "floor_multiple": p50 / 0.0061, "within_budget": True,
            "budget_misses": [], "latency_ratio": 0.0682 / p50}


REPORT = {
    "baseline": "baseline@onnxruntime", "selected": "student.int8_static@openvino",
    "variants": [variant("baseline", "fp32", 0.984, 0.0682, 901_875),
                 variant("baseline", "fp32", 0.984, 0.0545, 901_875, "openvino", "f32"),
                 variant("student.int8_static", "static", 0.979, 0.0304, 23_088, "openvino", "f32"),
                 variant("student.int8_static", "static", 0.978, 0.0412, 23_088)
                 | {"within_budget": False, "budget_misses": ["p50 0.0412 ms > max_p50_ms 0.04"]}],
    "runtimes": {"onnxruntime": {"version": "1.32.0", "floor_p50_ms": 0.0061},
                 "openvino": {"version": "2026.4.1", "floor_p50_ms": 0.0049}},
    "skipped": [{"variant": "student.int8_static", "runtime": "openvino-bf16",
                 "reason": "OpenVINO cannot compile models/onnx/student.int8_static.onnx: no bf16 kernel"}],
    "hardware": {"cpu": "Some CPU 9000X", "cores": 2, "threads": 1, "onnxruntime": "1.32.0",
                 "isa": ["avx2", "avx512_vnni", "avx512f", "fma"]},
    "selection": {"selected": "student.int8_static@openvino", "variant": "student.int8_static",
                  "runtime": "openvino",
                  "why": "faster by 2.24x [2.01, 2.47] than the runner-up b",
                  "size_ratio": 39.06, "latency_ratio": 2.243, "latency_ratio_range": [2.01, 2.47],
                  "accuracy_drop_pt": 0.5, "val_accuracy_drop_pt": 0.3, "latency_margin": 0.1, "rounds": 5,
                  "wins_needed": 4},
    "lineage": {"commit": "0123abc" * 5 + "12345",
                "command": "git checkout 0123abc && dvc pull && dvc repro evaluate",
                "data": {"path": "data/prepared", "md5": "9f0e1d2c3b4a59687766554433221100.dir"},
                "models": [{"path": "models/baseline", "md5": "11111111111111111111111111111111.dir"},
                           {"path": "models/student", "md5": "22222222222222222222222222222222.dir"}],
                "onnx": {"path": "models/onnx/student.int8_static.onnx",
                         "md5": "33333333333333333333333333333333"},
                "params": {"distill": {"temperature": 4.0, "alpha": 0.5}},
                "compression": ["knowledge distillation (temperature 4, alpha 0.5)", "int8 static"],
                "calibration": {"batches": 8, "batch_size": 32},
                "classes": ["0", "1", "2"], "sizes": {"train": 3500, "val": 500, "test": 1000},
                "checks": [{"name": "row_count", "message": "5000 images; at least 100 required"}]},
}


def test_every_number_in_the_card_is_one_evaluate_json_holds():
    card = render(REPORT)
    assert numbers_not_in(card, REPORT) == []
    for text in ("# Model card: `student.int8_static` on openvino", "bytes ratio **39.06x**",
                 "speed-up\n**2.24x**", "[2.01, 2.47]", "97.90%", "0.0304 / 0.0368 / 0.0568", "123,457",
                 "4.98x",
                 "AVX2 yes, AVX512 yes, VNNI yes, AMX no", "8 batch(es) of 32", "`row_count`",
                 "train 3,500", "md5 `22222222222222222222222222222222.dir`", '"temperature": 4.0'):
        assert text in card, text
    # the runtime it ships on, and the same file on the others: measured, or why not
    for text in ("openvino 2026.4.1 (precision: f32)", "`model.xml`",
                 "shipped `student.int8_static@openvino`", "baseline `baseline@onnxruntime`",
                 "Runtime floor of openvino (a one-op graph, same settings): 0.0049 ms",
                 "- onnxruntime 1.32.0 (precision: as stored): p50 0.0412 ms",
                 "not eligible: p50 0.0412 ms > max_p50_ms 0.04",
                 "- openvino-bf16: could not load it (OpenVINO cannot compile"):
        assert text in card, text
    assert "baseline@openvino" not in card  # another variant: not the shipped file on another runtime
    # the check is not vacuous: a number the report lacks is caught
    assert numbers_not_in(card.replace("39.06x", "41.00x"), REPORT) == ["41.00"]


def test_an_onnxruntime_card_names_no_ir_and_says_when_no_other_runtime_ran():
    ort = REPORT["variants"][0] | {"name": "small@onnxruntime", "variant": "small", "bytes": 4_096}
    report = dict(REPORT, variants=[REPORT["variants"][0], ort], selected="small@onnxruntime", skipped=[],
                  runtimes={"onnxruntime": REPORT["runtimes"]["onnxruntime"]})
    card = render(report)
    assert card.startswith("# Model card: `small` on onnxruntime")
    assert "## Runtime\nonnxruntime 1.32.0 (precision: as stored), with the settings" in card
    assert "model.xml" not in card and "- (no other runtime was measured)" in card
    assert numbers_not_in(card, report) == []


def test_no_selection_gives_a_card_that_says_why():
    report = dict(REPORT, selected=None, selection={"why": "no variant meets every budget"})
    assert render(report).startswith("# Model card\n\nNo model shipped: no variant meets every budget.")


def test_isa_names_the_kernel_families():
    assert _isa(["avx", "avx2", "fma"]) == "AVX2 yes, AVX512 no, VNNI no, AMX no"
    assert _isa(["avx_vnni", "amx_tile"]) == "AVX2 no, AVX512 no, VNNI yes, AMX yes"


@pytest.mark.parametrize("source, models, sections, kd", [
    ("baseline", ["baseline"], ["data", "baseline", "train"], False),
    ("student", ["baseline", "student"], ["data", "baseline", "train", "student", "distill"], True),
    ("student_scratch", ["student_scratch"], ["data", "student", "train", "distill"], False),
    ("prune_structured", ["baseline", "pruned/structured"], ["data", "baseline", "train", "prune"], False),
])
def test_lineage_follows_the_source_back_to_the_data(source, models, sections, kd):
    got_models, got_sections, steps = path_of(source, Params())
    assert (got_models, got_sections) == (models, sections)
    assert any("knowledge distillation" in s for s in steps) == kd
    if source.startswith("prune_"):
        assert "75% of the channels removed" in steps[-1] and "under KD from the baseline" in steps[-1]


def test_pruned_student_lineage_keeps_the_teacher_once():
    params = Params.model_validate({"prune": {"source": "student"}})
    models, _, steps = path_of("prune_layer", params)
    assert models == ["baseline", "student", "pruned/layer"]
    assert len(steps) == 2 and "pruning `layer` of the student" in steps[1]
    with pytest.raises(ValueError, match="no lineage rule"):
        path_of("mystery", params)


def test_lineage_names_the_nodes_static_int8_kept_in_fp32(tmp_path):
    from slimline.evaluation.card import lineage

    for folder in ("data/prepared", "models/baseline", "models/onnx"):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "x.bin").write_bytes(b"x")
    chosen = {"source": "baseline", "quantization": "static"}
    entry = {"path": str(tmp_path / "models/onnx/x.bin"), "fp32_nodes": ["/0/0.3/Conv"]}
    meta = {"num_classes": 2, "sizes": {"train": 4}}
    lin = lineage(chosen, entry, Params(), tmp_path / "data/prepared", tmp_path / "models", meta, "abc",
                  {"batches": 1, "batch_size": 2})
    assert lin["compression"][-1].endswith("1 node(s) kept in fp32 to stay within "
                                           "quantize.max_accuracy_drop: `/0/0.3/Conv`")
    assert lin["calibration"] == {"batches": 1, "batch_size": 2} and lin["classes"] == ["0", "1"]
    assert set(lin["params"]) == {"data", "baseline", "train", "quantize"}


def test_qat_lineage_cites_the_teacher_the_qat_folder_and_its_recipe(tmp_path):
    from slimline.evaluation.card import lineage

    folders = ("data/prepared", "models/baseline", "models/pruned/structured", "models/qat/prune_structured")
    for folder in folders:
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "x.bin").write_bytes(folder.encode())
    chosen = {"source": "prune_structured", "quantization": "qat"}
    entry = {"path": str(tmp_path / "models/qat/prune_structured/x.bin"),
             "qat": {"epochs": 2, "lr": 0.005, "best_epoch": 1}}
    lin = lineage(chosen, entry, Params(), tmp_path / "data/prepared", tmp_path / "models",
                  {"num_classes": 2, "sizes": {"train": 4}}, "abc", {"batches": 1, "batch_size": 2})
    assert [m["path"].removeprefix(f"{tmp_path}/") for m in lin["models"]] == [
        "models/baseline", "models/pruned/structured", "models/qat/prune_structured"]
    assert lin["compression"][-1].startswith(
        "quantization-aware training: 2 epoch(s) of fine-tuning with fake int8 under KD from the baseline "
        "(temperature 4, alpha 0.5)")
    assert "epoch 1 chosen on val" in lin["compression"][-1]
    assert {"qat", "quantize", "distill", "prune"} <= set(lin["params"])
    assert lin["calibration"] == {"batches": 1, "batch_size": 2}
    assert lin["onnx"]["path"] == entry["path"]


def test_student_lineage_names_feature_hints_when_on():
    off = path_of("student", Params())[2][0]
    assert "feature hints" not in off and off.endswith("alpha 0.5) into a smaller student")
    auto = path_of("student", Params.model_validate(
        {"distill": {"features": "auto", "feature_weight": 2}}))[2][0]
    assert "FitNets feature hints, distill.features auto, weight 2" in auto
    pairs = Params.model_validate({"distill": {"features": [["0.4", "0.4"]]}})
    assert "distill.features 0.4 <- 0.4, weight 3" in path_of("student", pairs)[2][0]
