"""params.yaml schema: bad input is rejected before any work, naming key, value and what's allowed."""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from slimline.params import Params, ParamsError, load_params, parse_params

ROOT = Path(__file__).resolve().parents[2]


def test_committed_params_are_valid_and_match_the_seed_network():
    p = load_params(ROOT / "params.yaml")
    assert p.baseline.conv_channels == [32, 64]
    assert p.baseline.kernel_size == 3 and p.baseline.pool == 2
    assert p.baseline.hidden == [128] and p.baseline.activation == "relu"
    assert p.data.source == "mnist5k"


def test_defaults_fill_missing_sections():
    assert parse_params({}) == Params()


@pytest.mark.parametrize("raw, needles", [
    # 1. unknown top-level section: lists the allowed sections
    ({"trian": {}}, ["trian", "unknown key", "baseline", "data", "train"]),
    # 2. unknown key inside a section: lists that section's keys
    ({"train": {"learning_rate": 0.1}}, ["train.learning_rate", "unknown key", "lr", "epochs"]),
    # 3. bad enum: names the allowed values
    ({"train": {"optimizer": "adam"}}, ["train.optimizer", "'adam'", "sgd", "adamw"]),
    # 4. bad activation
    ({"baseline": {"activation": "tanh"}}, ["baseline.activation", "tanh", "leaky_relu", "elu"]),
    # 5. wrong type
    ({"train": {"epochs": "ten"}}, ["train.epochs", "ten", "integer"]),
    # 6. out of range
    ({"train": {"epochs": 0}}, ["train.epochs", "greater than or equal to 1"]),
    # 7. fraction out of range
    ({"data": {"val_fraction": 1.5}}, ["data.val_fraction", "1.5", "less than 1"]),
    # 8. cross-field: idx without a path
    ({"data": {"source": "idx"}}, ["data.path is required", "idx"]),
    # 9. non-positive width in a list
    ({"baseline": {"hidden": [128, 0]}}, ["baseline", "hidden", "positive", "[0]"]),
    # 10. no layers at all
    ({"baseline": {"conv_channels": [], "hidden": []}}, ["baseline", "both empty"]),
    # 11. bad source name
    ({"data": {"source": "cifar"}}, ["data.source", "cifar", "mnist5k", "idx", "npz"]),
    # 12. bad schedule and device together: every problem is reported, not just the first
    ({"train": {"schedule": "step", "device": "tpu"}}, ["train.schedule", "train.device", "2 problem"]),
    # 13. fractions that leave no training data
    ({"data": {"val_fraction": 0.5, "test_fraction": 0.45}}, ["val_fraction + data.test_fraction"]),
    # 14. section of the wrong shape
    ({"train": [1, 2]}, ["train", "valid dictionary"]),
    # 15. limit too small to stratify
    ({"data": {"limit": 5}}, ["data.limit", "greater than or equal to 20"]),
])
def test_schema_rejects_with_readable_message(raw, needles):
    with pytest.raises(ParamsError) as exc:
        parse_params(raw)
    msg = str(exc.value)
    for needle in needles:
        assert needle in msg, f"{needle!r} missing from:\n{msg}"


def test_top_level_must_be_a_mapping():
    with pytest.raises(ParamsError, match="mapping of sections"):
        parse_params([1, 2, 3])


def test_bad_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "nope.yaml")


def test_stage_rejects_bad_params_before_any_work(tmp_path):
    """A stage run with a typo in a section it reads exits 2 with the message and writes nothing."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"]["lmit"] = 100
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    proc = subprocess.run([sys.executable, "-m", "tasks.prepare", "--params", "params.yaml",
                           "--out", "data/prepared"],
                          cwd=tmp_path, capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2
    assert "data.lmit: unknown key" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_a_stage_validates_only_the_sections_it_reads():
    raw = {"train": {"epochs": 3}, "gate": {"max_latency_increase": "lots"}, "serach": {}}
    p = parse_params(raw, sections=("baseline", "train"))
    assert p.train.epochs == 3 and p.baseline == Params().baseline
    with pytest.raises(AttributeError):
        _ = p.gate  # not read, not validated: the stage cannot use it by mistake
    with pytest.raises(ParamsError, match="gate.max_latency_increase"):
        parse_params(raw)  # the full check (slimline check, make run, the flow) still rejects it
    with pytest.raises(ParamsError, match=r"train\.lr: .*got 'fast'"):
        parse_params({"train": {"lr": "fast"}}, sections=("train",))
    with pytest.raises(ParamsError, match="train.learning_rate: unknown key.*epochs"):
        parse_params({"train": {"learning_rate": 0.1}}, sections=("train",))


def test_cross_section_checks_run_when_the_stage_reads_every_section_involved():
    raw = {"train": {"epochs": 2}, "distill": {"epochs": 5}}
    with pytest.raises(ParamsError, match=r"distill.epochs \(5\) exceeds train.epochs"):
        parse_params(raw, sections=("student", "distill", "train"))
    assert parse_params(raw, sections=("distill",)).distill.epochs == 5  # train not read here


def test_each_stage_reads_exactly_the_sections_dvc_yaml_reruns_it_for():
    import importlib

    from slimline.codedeps import stage_modules

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, module in stage_modules().items():
        declared = {k.split(".")[0] for k in (stages[name].get("do") or stages[name])["params"]}
        assert set(importlib.import_module(module).SECTIONS) == declared, name


def test_loader_settings_are_read_by_the_training_stages_and_rerun_nothing():
    import importlib

    from slimline.codedeps import stage_modules

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    readers = set()
    for name, module in stage_modules().items():
        declared = {k.split(".")[0] for k in (stages[name].get("do") or stages[name])["params"]}
        settings = set(getattr(importlib.import_module(module), "SETTINGS", ()))
        assert settings <= {"loader"} and not settings & declared, name
        readers |= {name} if settings else set()
    assert {"train_baseline", "distill", "prune", "qat"} <= readers
    with pytest.raises(ParamsError, match=r"loader\.workers: .*greater than or equal to 0"):
        parse_params({"loader": {"workers": -1}}, sections=("train", "loader"))


# --- section rules and cross-checks of distill, prune, quantize and evaluate ---------------

BIG = {"conv_channels": [64, 128], "hidden": [256]}


def _err(raw) -> str:
    with pytest.raises(ParamsError) as info:
        parse_params(raw)
    return str(info.value)


def test_student_not_smaller_than_baseline_is_rejected():
    msg = _err({"student": BIG})
    assert "not smaller" in msg and "require_smaller" in msg
    # the student equal to the baseline is not smaller either
    assert "not smaller" in _err({"student": {"conv_channels": [32, 64], "hidden": [128]}})


def test_require_smaller_false_allows_a_bigger_student():
    p = parse_params({"student": BIG, "distill": {"require_smaller": False}})
    assert p.student.conv_channels == [64, 128]
    assert p.distill.require_smaller is False


@pytest.mark.parametrize("amount, needle", [(1.0, "less than 1"), (-0.1, "greater than or equal to 0"),
                                            (1.5, "less than 1")])
def test_prune_amount_outside_unit_interval(amount, needle):
    msg = _err({"prune": {"amount": amount}})
    assert "prune.amount" in msg and needle in msg and repr(amount) in msg


def test_prune_amount_zero_is_allowed():
    assert parse_params({"prune": {"amount": 0.0}}).prune.amount == 0.0


def test_unknown_prune_method_lists_allowed_names():
    msg = _err({"prune": {"methods": ["unstructured", "magnitude"]}})
    assert "prune.methods" in msg and "magnitude" in msg
    for name in ("unstructured", "structured", "layer"):
        assert f"'{name}'" in msg


def test_duplicated_prune_method():
    msg = _err({"prune": {"methods": ["layer", "structured", "layer"]}})
    assert "prune.methods" in msg and "twice" in msg


def test_empty_prune_methods():
    assert "prune.methods" in _err({"prune": {"methods": []}})


def test_calibration_larger_than_implied_train_data():
    # limit 100 -> about 70 training images; the default 8 x 32 = 256 do not fit
    msg = _err({"data": {"limit": 100}})
    assert "calibration_batches" in msg and "256" in msg and "70" in msg
    msg = _err({"data": {"limit": 400}, "quantize": {"calibration_batches": 9, "calibration_batch_size": 32}})
    assert "288" in msg and "280" in msg
    # fits: 400 -> 280 training images, 8 x 32 = 256
    assert parse_params({"data": {"limit": 400}}).data.limit == 400
    assert parse_params({"data": {"limit": 100},
                         "quantize": {"calibration_batches": 2, "calibration_batch_size": 32}})


def test_distill_epochs_beyond_train_epochs():
    msg = _err({"train": {"epochs": 5}, "distill": {"epochs": 6}})
    assert "distill.epochs (6)" in msg and "train.epochs (5)" in msg
    assert parse_params({"train": {"epochs": 5}, "distill": {"epochs": 5}}).distill.epochs == 5


def test_unknown_evaluate_objective():
    msg = _err({"evaluate": {"objective": "accuracy"}})
    assert "evaluate.objective" in msg and "'accuracy'" in msg
    assert "'latency'" in msg and "'size'" in msg


def test_max_accuracy_drop_must_be_a_fraction():
    # 0.5 is 50 pt; 5 (meaning "5 pt") must be rejected, not read as 500 pt
    assert "evaluate.max_accuracy_drop" in _err({"evaluate": {"max_accuracy_drop": 5}})


def test_evaluate_runtimes_default_to_both_cpu_runtimes_onnxruntime_first():
    assert Params().evaluate.runtimes == ["onnxruntime", "openvino"]
    assert parse_params({"evaluate": {"runtimes": ["openvino-bf16"]}}).evaluate.runtimes == ["openvino-bf16"]


def test_unknown_evaluate_runtime_lists_the_allowed_ones():
    msg = _err({"evaluate": {"runtimes": ["onnxruntime", "tflite"]}})
    assert "evaluate.runtimes" in msg and "'tflite'" in msg
    for name in ("onnxruntime", "openvino", "openvino-bf16", "onnxruntime-cuda", "onnxruntime-tensorrt"):
        assert f"'{name}'" in msg, name


def test_a_runtime_listed_twice_or_none_is_refused():
    msg = _err({"evaluate": {"runtimes": ["openvino", "onnxruntime", "openvino"]}})
    assert "evaluate.runtimes" in msg and "twice" in msg
    assert "evaluate.runtimes" in _err({"evaluate": {"runtimes": []}})


def test_qat_params_errors_name_the_key_and_the_fix():
    assert Params().qat.enabled is False and Params().qat.models == ["student"]  # off by default
    msg = _err({"qat": {"models": ["resnet"]}})  # a model no stage makes
    assert "qat.models" in msg and "'resnet'" in msg and "'baseline'" in msg and "'student'" in msg
    msg = _err({"qat": {"enabled": True}, "quantize": {"variants": ["dynamic", "fp16"]}})
    assert "quantize.variants" in msg and "lacks static" in msg and "qat.enabled: false" in msg
    assert not parse_params({"qat": {"enabled": False}, "quantize": {"variants": ["dynamic"]}}).qat.enabled
    msg = _err({"qat": {"pruned": ["layer"]}, "prune": {"methods": ["structured"]}})
    assert "qat.pruned" in msg and "['layer']" in msg and "prune.methods" in msg
    assert "qat.pruned" in _err({"qat": {"pruned": ["magnitude"]}})
    assert "both empty" in _err({"qat": {"models": [], "pruned": []}})
    assert "twice" in _err({"qat": {"models": ["student", "student"]}})
    # the quantize check runs in the QAT stage, which reads both sections
    with pytest.raises(ParamsError, match="lacks static"):
        parse_params({"qat": {"enabled": True}, "quantize": {"variants": []}},
                     sections=("qat", "train", "distill", "quantize"))


# --- the model a section builds ----------------------------------------------------------

@pytest.mark.parametrize("section, needles", [
    ({"baseline": {"model": "torchvision:resnet18", "hidden": [64]}},
     ["baseline", "hidden", "structure keys of the built-in cnn", "resnet18"]),
    ({"baseline": {"model": "resnet18"}},
     ["baseline.model", "torchvision:<name>", "python:<module>:<callable>"]),
    ({"baseline": {"skip_training": True}}, ["skip_training needs weights"]),
    ({"baseline": {"kwargs": {"width": 2}}}, ["kwargs apply to zoo and python models"]),
    ({"student": {"derive": {"width": 0.5}, "conv_channels": [4]}}, ["derive", "remove conv_channels"]),
    ({"student": {"derive": {"width": 1.5}}}, ["student.derive.width", "less than 1"]),
    ({"student": {"weights": "s.pt", "skip_training": True}}, ["student", "distill trains"]),
])
def test_model_keys_are_checked_before_any_work(section, needles):
    with pytest.raises(ParamsError) as err:
        parse_params(section)
    for needle in needles:
        assert needle in str(err.value), (needle, str(err.value))


def test_zoo_and_derived_models_are_accepted_and_the_search_refuses_them():
    from slimline.search.space import build_candidates

    p = parse_params({"baseline": {"model": "timm:resnet10t", "kwargs": {"drop_rate": 0.1}},
                      "student": {"derive": {"from": "baseline", "width": 0.25}}})
    assert p.baseline.model == "timm:resnet10t" and p.student.derive.width == 0.25
    with pytest.raises(ParamsError, match="structure search varies the built-in cnn"):
        build_candidates({"baseline": {"model": "timm:resnet10t"}}, code_state="")
