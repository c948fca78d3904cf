"""The flow's parts on fixed inputs: overrides, the regression gate, metric deltas,
progress parsing and the workspace checkout step."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from flows.reports import Progress, artifact_key
from slimline.evaluation.gate import regression_gate
from slimline.evaluation.history import metric_deltas
from slimline.overrides import OverrideError, apply, as_set_args, validate
from slimline.params import GateParams
from tests.support.project import ROOT, sh


def git_repo(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    sh(["git", "init", "-q", "-b", "main"], path)
    return path


def commit(repo: Path, msg: str = "c") -> None:
    sh(["git", "add", "-A"], repo)
    sh(["git", "commit", "-qm", msg, "--allow-empty"], repo)


# --- overrides -------------------------------------------------------------------

@pytest.fixture
def params_dir(tmp_path):
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    return tmp_path


def test_overrides_are_written_like_dvc_exp_run_set(params_dir):
    args = apply(params_dir, {"train.epochs": 3, "student.hidden": [64, 32], "data.limit": None,
                              "baseline.activation": "elu", "data.path": "a,b=c'd"})
    assert args == ["train.epochs=3", "student.hidden=[64, 32]", "data.limit=null",
                    "baseline.activation='elu'", "data.path='a,b=c\\'d'"]
    raw = yaml.safe_load((params_dir / "params.yaml").read_text())
    assert raw["train"]["epochs"] == 3 and raw["student"]["hidden"] == [64, 32]
    assert raw["data"]["limit"] is None and raw["baseline"]["activation"] == "elu"
    assert raw["data"]["path"] == "a,b=c'd"  # not a sweep of "a" and "b=c'd"
    assert raw["train"]["lr"] == yaml.safe_load((ROOT / "params.yaml").read_text())["train"]["lr"]


@pytest.mark.parametrize("overrides, expected", [
    ({"train.epochz": 3}, "train.epochz: unknown key. Allowed keys here: augment_shift"),
    ({"trian.epochs": 3}, "'trian' is not a section of params.yaml"),
    ({"baseline.activation": "tanh"}, "baseline.activation: Input should be 'relu'"),
    ({"train.epochs": 0}, "train.epochs"),
    ({"train": 3}, "train"),
    ({"gate.max_latency_increase": float("inf")}, "not a usable value"),
])
def test_bad_overrides_name_the_key_and_leave_params_untouched(params_dir, overrides, expected):
    before = (params_dir / "params.yaml").read_bytes()
    with pytest.raises(OverrideError, match=None) as err:
        apply(params_dir, overrides)
    assert expected in str(err.value)
    assert (params_dir / "params.yaml").read_bytes() == before


def test_set_args_round_trip_through_yaml():
    args = as_set_args({"a.b": [1, 2], "c.d": 0.5, "e.f": True, "g.h": "x y"})
    parsed = {a.split("=", 1)[0]: yaml.safe_load(a.split("=", 1)[1]) for a in args}
    assert parsed == {"a.b": [1, 2], "c.d": 0.5, "e.f": True, "g.h": "x y"}
    assert validate(ROOT, {}) == []


def test_set_args_survive_dvcs_own_parser(tmp_path):
    """The one -S writer (flow overrides and search candidates): a string with a comma
    stays one string, where a bare `a,b` would be a sweep of two values to Hydra."""
    from dvc.utils.hydra import apply_overrides

    path = tmp_path / "params.yaml"
    path.write_text("data:\n  path: null\ntrain:\n  lr: 0.05\n  grad_clip: 2.0\n")
    apply_overrides(path, as_set_args({"data.path": "a,b", "train.lr": 0.02, "train.grad_clip": None}))
    assert yaml.safe_load(path.read_text()) == {"data": {"path": "a,b"},
                                                "train": {"lr": 0.02, "grad_clip": None}}


# --- the regression gate ---------------------------------------------------------

def report(acc: float, p50: float, base_p50: float = 0.1, cpu: str = "cpu A", selected="student"):
    return {"baseline": "baseline", "selected": selected, "hardware": {"cpu": cpu},
            "variants": [{"name": "baseline", "accuracy": 0.99, "ort_p50_ms_b1": base_p50},
                         {"name": "student", "accuracy": acc, "ort_p50_ms_b1": p50}]}


@pytest.fixture
def gated(tmp_path):
    repo = git_repo(tmp_path / "repo")
    (repo / "reports").mkdir()

    def run(before: dict | None, now: dict, **gate):
        if before is not None:
            (repo / "reports" / "evaluate.json").write_text(json.dumps(before))
            commit(repo)
        (repo / "reports" / "evaluate.json").write_text(json.dumps(now))
        return regression_gate(repo, GateParams(**gate))
    return run


def test_gate_passes_an_unchanged_or_better_model(gated):
    v = gated(report(0.98, 0.03), report(0.981, 0.03))
    assert v.ok and "no regression against HEAD" in v.message


def test_gate_fails_on_an_accuracy_drop_and_names_it(gated):
    v = gated(report(0.98, 0.03), report(0.97, 0.03))
    assert not v.ok
    assert "test accuracy of the selected model fell 1.00 pt" in v.message
    assert "0.9800 -> 'student' 0.9700" in v.message
    assert gated(report(0.98, 0.03), report(0.97, 0.03), max_accuracy_drop=0.02).ok


def test_gate_compares_latency_relative_to_the_baseline_on_the_same_cpu_only(gated):
    # the whole machine got 2x slower: the ratio is unchanged, no regression
    assert gated(report(0.98, 0.03, 0.1), report(0.98, 0.06, 0.2)).ok
    v = gated(report(0.98, 0.03, 0.1), report(0.98, 0.06, 0.1))
    assert not v.ok and "latency of the selected model rose 100%" in v.message
    other = gated(report(0.98, 0.03, 0.1), report(0.98, 0.06, 0.1, cpu="cpu B"))
    assert other.ok and "different CPU model" in other.message


def test_gate_without_history_or_when_nothing_is_selected(gated):
    assert "first run" in gated(None, report(0.98, 0.03)).message
    v = gated(report(0.98, 0.03), report(0.98, 0.03, selected=None))
    assert not v.ok and "no variant meets the budgets now" in v.message
    assert gated(report(0.98, 0.03), report(0.5, 0.03), enabled=False).ok


def pairs_report(acc: float, p50: float, base_p50: float = 0.1, selected="student@openvino"):
    """A report from after runtimes were chosen: candidates `variant@runtime`, the baseline on
    the reference runtime, p50_ms_b1 (the pair's own runtime)."""
    return {"baseline": "baseline@onnxruntime", "selected": selected, "hardware": {"cpu": "cpu A"},
            "variants": [{"name": "baseline@onnxruntime", "variant": "baseline", "runtime": "onnxruntime",
                          "accuracy": 0.99, "p50_ms_b1": base_p50},
                         {"name": "student@openvino", "variant": "student", "runtime": "openvino",
                          "accuracy": acc, "p50_ms_b1": p50}]}


def test_gate_compares_a_report_of_runtime_pairs_with_one_from_before_them(gated):
    v = gated(report(0.98, 0.03), pairs_report(0.981, 0.03))
    assert v.ok and "'student@openvino' 0.9810 vs 'student' 0.9800" in v.message
    v = gated(report(0.98, 0.03, 0.1), pairs_report(0.97, 0.06, 0.1))
    assert not v.ok and "fell 1.00 pt" in v.message and "latency of the selected model rose 100%" in v.message
    assert gated(pairs_report(0.98, 0.03), pairs_report(0.98, 0.06, 0.2)).ok  # the ratio is unchanged
    assert not gated(pairs_report(0.98, 0.03), pairs_report(0.98, 0.03, selected=None)).ok


def test_metric_deltas_against_the_last_commit(tmp_path):
    repo = git_repo(tmp_path / "r")
    (repo / "reports").mkdir()
    (repo / "reports" / "x.json").write_text(json.dumps({"acc": 0.9, "n": 5, "name": "a"}))
    commit(repo)
    (repo / "reports" / "x.json").write_text(json.dumps({"acc": 0.95, "n": 5, "new": {"k": 1}}))
    rows = {r["metric"]: r for r in metric_deltas(repo, "reports/x.json")}
    assert rows["acc"]["previous"] == 0.9 and rows["acc"]["change"] == pytest.approx(0.05)
    assert rows["n"]["change"] == 0 and rows["new.k"]["previous"] is None
    assert "name" not in rows


# --- progress and keys -----------------------------------------------------------

def test_progress_reads_the_training_epoch_lines(monkeypatch):
    calls = []
    monkeypatch.setattr("flows.reports.create_progress_artifact",
                        lambda **kw: calls.append(("create", kw)) or "id-1")
    monkeypatch.setattr("flows.reports.update_progress_artifact",
                        lambda **kw: calls.append(("update", kw)))
    p = Progress("nightly", "train_baseline")
    for line in ["Running stage 'train_baseline':",
                 "train_baseline epoch 1/4: train_loss 1.0 val_acc 0.5 (900 samples/s)",
                 "train_baseline epoch 2/4: train_loss 0.5 val_acc 0.7 (900 samples/s)"]:
        p.update(line)
    assert calls[0] == ("create", {"progress": 25.0, "key": "nightly-train-baseline-progress",
                                   "description": "train_baseline: train_baseline, epoch 1 of 4"})
    assert (calls[1][0] == "update" and calls[1][1]["progress"] == 50.0
            and calls[1][1]["artifact_id"] == "id-1")


def test_artifact_keys_are_per_deployment_and_valid():
    assert artifact_key("nightly", "evaluate", "report") == "nightly-evaluate-report"
    assert artifact_key("local", "prune@layer", "metrics") == "local-prune-layer-metrics"
    assert artifact_key("search-c1", "sub/dvc.yaml:Train_X", "report") == \
        "search-c1-sub-dvc-yaml-train-x-report"


# --- the workspace pull step -----------------------------------------------------

def test_checkout_clones_then_follows_the_branch_with_history(tmp_path, monkeypatch):
    from flows.workspace import checkout

    origin = git_repo(tmp_path / "origin")
    sh([sys.executable, "-m", "dvc", "init", "-q"], origin)
    for i in range(3):
        (origin / "f.txt").write_text(str(i))
        commit(origin, f"c{i}")
    monkeypatch.setenv("SLIMLINE_WORKSPACES", str(tmp_path / "ws"))
    monkeypatch.setenv("SLIMLINE_DVC_CACHE", str(tmp_path / "cache"))
    # in a worker, the flow then imports the checkout's code; here that would swap
    # this test session's modules, so just record the call
    switched = []
    monkeypatch.setattr("flows.workspace._use_workspace_code", switched.append)
    path_before = list(sys.path)
    try:
        # file://, so git clones as it would over the network (a plain path ignores filters)
        out = checkout(repository=origin.as_uri(), workspace="nightly")
        assert switched == [Path(out["directory"])]
        ws = Path(out["directory"])
        assert ws == (tmp_path / "ws" / "nightly").resolve() and (ws / "f.txt").read_text() == "2"
        # the whole history, not a shallow clone: `dvc metrics diff HEAD~1` and `dvc exp` work
        assert sh(["git", "rev-parse", "--is-shallow-repository"], ws).stdout.strip() == "false"
        assert sh(["git", "rev-list", "--count", "HEAD"], ws).stdout.strip() == "3"
        assert sh([sys.executable, "-m", "dvc", "cache", "dir"], ws).stdout.strip() == str(tmp_path / "cache")

        (ws / "f.txt").write_text("local edit")  # an earlier run's override, say
        (ws / "untracked.txt").write_text("x")
        (origin / "f.txt").write_text("3")
        commit(origin, "c3")
        (tmp_path / "remote.conf").write_text("[core]\n    remote = storage\n")
        monkeypatch.setenv("SLIMLINE_DVC_CONFIG_LOCAL", str(tmp_path / "remote.conf"))
        out2 = checkout(repository=origin.as_uri(), workspace="nightly")
        assert out2["directory"] == out["directory"]
        assert (ws / "f.txt").read_text() == "3" and not (ws / "untracked.txt").exists()
        assert out2["commit"] == sh(["git", "rev-parse", "HEAD"], origin).stdout.strip()
        # the worker's remote settings arrive, and the shared cache setting survives them
        config = (ws / ".dvc" / "config.local").read_text()
        assert "remote = storage" in config and str(tmp_path / "cache") in config
    finally:
        sys.path[:] = path_before
