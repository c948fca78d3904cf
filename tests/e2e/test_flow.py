"""The Prefect flow over dvc.yaml, against the test run's Prefect server: stage order from DVC,
skips and reruns, run-cache restores, restoring outputs after a failure, stopping a stage,
the regression gate and the checks before any work. On the toy project (tests/support/toy.py):
what is tested is the flow and DVC around the stages, not what the stages compute."""
import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.support.prefect_server import artifacts
from tests.support.processes import processes_in, signal_state
from tests.support.project import run_env, sh, tree_digest, update_params


@pytest.fixture
def prefect_server(prefect_api):
    """The session's real Prefect server (tests/conftest.py)."""
    return prefect_api


def found_summary(state) -> str:
    table = artifacts(state.state_details.flow_run_id)["local-pipeline-summary"].data
    return table if isinstance(table, str) else json.dumps(table)


def test_stage_order_comes_from_dvc(toy_project):
    from dvc.repo import Repo

    from slimline.dvc_runner import stage_order

    with Repo(str(toy_project)) as repo:
        order = stage_order(repo)
        assert order[:3] == ["prepare", "train_baseline", "distill"]
        assert sorted(order[3:6]) == ["prune@layer", "prune@structured", "prune@unstructured"]
        assert sorted(order[6:8]) == ["qat@student", "quantize"] and order[8:] == ["evaluate"]
        assert stage_order(repo, ["train_baseline"]) == ["prepare", "train_baseline"]
        assert stage_order(repo, ["prepare"]) == ["prepare"]
        with pytest.raises(ValueError, match="unknown stage"):
            stage_order(repo, ["nope"])


def test_flow_runs_changed_stages_skips_the_rest_and_publishes_reports(prefect_server, toy_copy):
    from flows.pipeline import pipeline

    update_params(toy_copy, {"distill": {"temperature": 2.0}})
    state = pipeline(root=str(toy_copy), return_state=True)
    assert state.is_completed()
    results = {r["stage"]: r["outcome"] for r in state.result()}
    assert results == {"prepare": "skipped (up to date)", "train_baseline": "skipped (up to date)",
                       "distill": "ran", "prune@layer": "ran", "prune@structured": "ran",
                       "prune@unstructured": "ran", "quantize": "ran",
                       "qat@student": "ran",  # KD's temperature is a QAT param, even with QAT off
                       "evaluate": "ran"}

    found = artifacts(state.state_details.flow_run_id)
    # runs outside a deployment publish under "local-": deployments keep their own history
    keys = {f"local-{k}" for k in (
        "prepare-report", "train-baseline-report", "train-baseline-metrics", "distill-report",
        "prune-layer-report", "prune-structured-metrics", "quantize-report", "evaluate-report",
        "evaluate-metrics", "pipeline-summary", "regression-gate", "distill-progress", "sensitivity-report")}
    assert keys <= set(found), keys - set(found)
    sensitivity = found["local-sensitivity-report"].data  # its chart inline, as the dashboard shows it
    assert "## Structured pruning" in sensitivity and "](data:image/png;base64," in sensitivity
    assert "skipped" in found["local-prepare-report"].data
    assert "KD gain" in found["local-distill-report"].data
    assert ("Selected" in found["local-evaluate-report"].data
            or "No variant selected" in found["local-evaluate-report"].data)
    table = found["local-evaluate-metrics"].data
    table = json.loads(table) if isinstance(table, str) else table
    # a row per (variant, runtime) pair
    assert {"baseline@onnxruntime", "student@openvino", "prune_structured@onnxruntime"} <= \
        {row["name"] for row in table}

    # dvc.lock stayed true: a second flow run has nothing to do
    again = pipeline(root=str(toy_copy))
    assert {r["outcome"] for r in again} == {"skipped (up to date)"}


def test_run_cache_restore_is_reported_apart_from_up_to_date(prefect_server, toy_copy):
    from flows.pipeline import pipeline

    update_params(toy_copy, {"train": {"epochs": 3}})
    pipeline(root=str(toy_copy), targets=["train_baseline"])
    update_params(toy_copy, {"train": {"epochs": 2}})  # back to a config DVC has run before
    state = pipeline(root=str(toy_copy), targets=["train_baseline"], return_state=True)
    assert state.result()[-1]["outcome"] == "restored from run cache"
    # the markdown on disk is from the 3-epoch run: the artifact must not pass it off as this one
    report = artifacts(state.state_details.flow_run_id)["local-train-baseline-report"].data
    assert "belongs to another run" in report and "| epochs | 2 |" in report


def test_failed_stage_fails_the_flow_and_restores_outputs(prefect_server, toy_copy, tmp_path):
    from flows.pipeline import pipeline
    from slimline.errors import StageFailed

    before = tree_digest(toy_copy / "data" / "prepared")
    report_before = (toy_copy / "reports/prepare.json").read_bytes()
    bad = tmp_path / "bad.npz"
    x = np.random.default_rng(0).integers(0, 256, (200, 8, 8)).astype(np.float32)
    x[3, 0, 0] = np.nan
    np.savez(bad, x=x, y=np.arange(200) % 10)
    update_params(toy_copy, {"data": {"source": "npz", "path": str(bad)}})
    sh([sys.executable, "-m", "slimline.codedeps", "--write"], toy_copy)  # the data: a prepare dep

    state = pipeline(root=str(toy_copy), return_state=True)
    assert state.is_failed()
    with pytest.raises(StageFailed) as exc:
        state.result()
    assert "stage 'prepare' failed" in str(exc.value) and "pixels_finite" in str(exc.value)
    # DVC deleted the outputs before running; the flow restored them: the cached ones from
    # the DVC cache, the uncached report from its snapshot
    assert tree_digest(toy_copy / "data" / "prepared") == before
    assert (toy_copy / "reports/prepare.json").read_bytes() == report_before
    assert "failed" in found_summary(state)
    found = artifacts(state.state_details.flow_run_id)
    assert "failed" in found["local-prepare-report"].data
    assert "local-train-baseline-report" not in found  # nothing downstream ran


def as_in_a_terminal() -> None:
    """The stop signals at their defaults, as a command typed in a terminal has them. A
    suite started in the background (`make test &`, nohup, a CI runner) hands SIGINT
    down ignored (SigIgn 0x81001007 seen in the flow: HUP, INT and QUIT), and Python
    keeps an ignored SIGINT ignored, so the flow rightly ignored Ctrl-C there; whether
    a worker passed it on ignored depended on what ran in it before."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_DFL)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_stopping_the_flow_kills_the_running_stage(prefect_server, toy_copy, sig):
    """The stage runs in its own process group; stopping the flow must not orphan it."""
    from prefect.settings import PREFECT_API_URL

    update_params(toy_copy, {"train": {"epochs": 500}})  # far longer than the test waits
    env = {**run_env(), "PREFECT_API_URL": PREFECT_API_URL.value()}
    # faulthandler: SIGUSR1 prints every thread's stack, for a flow that ignores the stop
    start = ("import faulthandler, runpy, signal, sys\n"
             "faulthandler.register(signal.SIGUSR1, all_threads=True)\n"
             "sys.argv[0] = 'flows.pipeline'\n"
             "runpy.run_module('flows.pipeline', run_name='__main__')")
    flow = subprocess.Popen([sys.executable, "-c", start, "--root", str(toy_copy),
                             "--targets", "train_baseline"],
                            cwd=toy_copy, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, preexec_fn=as_in_a_terminal)
    deadline = time.monotonic() + 120
    while not list(toy_copy.glob(".slimline/resume/train_baseline-*/epoch-0001.pt")):
        assert flow.poll() is None, flow.stdout.read()
        assert time.monotonic() < deadline, "training never started"
        time.sleep(0.05)
    seen = signal_state(flow.pid)
    flow.send_signal(sig)
    try:
        flow.wait(timeout=15)  # 0.5-3.5 s when the flow acts on it
    except subprocess.TimeoutExpired:
        flow.send_signal(signal.SIGUSR1)  # it did not: where each thread is now
    out, _ = flow.communicate(timeout=60)
    # on a failure, where the stop went: the flow's signal masks and children when it was
    # sent, and any lost exception (Python prints "Exception ignored")
    stopped = "train_baseline: stopping the stage (process group" in out
    if not stopped:
        print("signal state when sent:", seen)  # whole, in the captured output of the failure
        print(out)  # with each thread's stack, if it ignored the stop
    lost = [line for line in out.splitlines() if "Exception ignored" in line or "Signal" in line]
    assert stopped, (seen, lost, out[-3000:])
    assert processes_in(toy_copy) == [], "a stage process outlived the flow"
    # the interrupted run can resume: its checkpoints are kept
    assert list(toy_copy.glob(".slimline/resume/train_baseline-*/epoch-*.pt"))


def test_regression_gate_fails_the_run_and_names_the_change(prefect_server, toy_copy):
    """The last commit shipped a better model than this run selects: the run fails,
    visibly, with the change in its message and its own artifact."""
    from flows.pipeline import pipeline
    from slimline.errors import RegressionFailed
    from slimline.evaluation import incumbent

    report = json.loads((toy_copy / "reports/evaluate.json").read_text())
    selected = next(v for v in report["variants"] if v["name"] == report["selected"])
    better = json.loads(json.dumps(report))
    next(v for v in better["variants"] if v["name"] == report["selected"])["accuracy"] = \
        selected["accuracy"] + 0.05
    (toy_copy / "reports/evaluate.json").write_text(json.dumps(better))
    incumbent.write(None, toy_copy / incumbent.PATH)
    sh(["git", "commit", "-qam", "a better model was shipped"], toy_copy)
    (toy_copy / "reports/evaluate.json").write_text(json.dumps(report))  # what DVC restores

    state = pipeline(root=str(toy_copy), targets=["evaluate"],
                     overrides={"gate.max_accuracy_drop": 0.005}, return_state=True)
    assert state.is_failed()
    with pytest.raises(RegressionFailed, match=r"test accuracy of the selected model fell 5\.00 pt"):
        state.result()
    gate = artifacts(state.state_details.flow_run_id)["local-regression-gate"].data
    assert "FAILED" in gate and "gate.max_accuracy_drop is 0.50 pt" in gate
    assert incumbent.read(toy_copy / incumbent.PATH) is None  # a failed gate accepts nothing

    # within a wider limit the gate passes, and only then the shipped variant becomes the incumbent
    state = pipeline(root=str(toy_copy), targets=["evaluate"],
                     overrides={"gate.max_accuracy_drop": 0.1}, return_state=True)
    assert state.is_completed()
    assert incumbent.read(toy_copy / incumbent.PATH) == report["selected"]


def test_the_flow_checks_the_whole_file_and_its_files_before_any_work(prefect_server, toy_copy):
    """As `slimline check` does: here a data folder params.yaml names but dvc.yaml does not
    list, so a changed image would not rerun prepare."""
    from flows.pipeline import pipeline
    from slimline.overrides import OverrideError

    before = tree_digest(toy_copy / "data" / "prepared")
    update_params(toy_copy, {"data": {"source": "imagefolder", "path": "images"}})
    with pytest.raises(OverrideError, match=r"prepare: images.*codedeps --write"):
        pipeline(root=str(toy_copy))
    assert tree_digest(toy_copy / "data" / "prepared") == before
