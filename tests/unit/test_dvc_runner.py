"""slimline/dvc_runner.py: what a stage did, read from DVC's exit code and output lines
(the lines as dvc prints them), a failure's message and retry decision, and one stage run
for real through `dvc repro --single-item` on a one-stage project."""
from __future__ import annotations

import logging
import sys

import pytest
import yaml

from slimline.dvc_runner import (
    LOCKED,
    RUN_CACHE_LINE,
    SKIP_LINE,
    StageOutcome,
    StageRun,
    UnknownStage,
    failure_text,
    is_transient,
    read_line,
    repro_args,
    run_stage,
    stage_order,
)
from slimline.errors import StageFailed, TransientFailure
from tests.support.project import dvc

RAN = ["Running stage 'prepare':", "> python -m tasks.prepare", "Updating lock file 'dvc.lock'"]
RUN_CACHE = ["Stage 'train_baseline' is cached - skipping run, checking out outputs",
             "Updating lock file 'dvc.lock'"]
ON_REMOTE = ["Stage 'prepare' didn't change, skipping"]
URL = "s3://slimline/dvc"


def test_the_outcome_keeps_the_words_the_reports_print():
    assert {o.name: o.label for o in StageOutcome} == {
        "RAN": "ran", "UP_TO_DATE": "skipped (up to date)",
        "ON_REMOTE": "skipped (up to date; outputs on the remote)",
        "RUN_CACHE": "restored from run cache", "FAILED": "failed"}
    assert {o for o in StageOutcome if o.skipped} == {StageOutcome.UP_TO_DATE, StageOutcome.ON_REMOTE}


@pytest.mark.parametrize("lines, pulled, outcome", [
    (RAN, False, StageOutcome.RAN),
    (RUN_CACHE, False, StageOutcome.RUN_CACHE),
    (RUN_CACHE, True, StageOutcome.RUN_CACHE),
    (ON_REMOTE, True, StageOutcome.ON_REMOTE),
    (ON_REMOTE, False, StageOutcome.RAN),  # without --allow-missing dvc does not print it; no guess
    ([], False, StageOutcome.RAN),
])
def test_dvc_output_is_read_line_by_line(lines, pulled, outcome):
    # as run_stage reads a stage's output while it streams (a non-zero exit wins over any line
    # there: the real run below checks it)
    seen = StageOutcome.RAN
    for line in lines:
        seen = read_line(line, seen, pulled)
    assert seen is outcome
    assert RUN_CACHE_LINE in RUN_CACHE[0] and SKIP_LINE in ON_REMOTE[0]


def test_a_failure_says_its_exit_code_and_raises_by_kind():
    lock = StageRun("prepare", StageOutcome.FAILED, 1.0, rc=1, message="m", transient=True)
    assert lock.label == "failed (exit 1), will retry" and lock.record()["outcome"] == "failed"
    with pytest.raises(TransientFailure, match="^m$"):
        lock.check()
    bad = StageRun("prepare", StageOutcome.FAILED, rc=2, message="bad data")
    assert bad.label == "failed (exit 2)"
    with pytest.raises(StageFailed, match="bad data") as err:
        bad.check()
    assert not isinstance(err.value, TransientFailure)
    ok = StageRun("distill", StageOutcome.RAN, 12.3456)
    ok.check()
    assert ok.label == "ran" and ok.record() == {"stage": "distill", "outcome": "ran", "seconds": 12.35}
    assert StageRun("prepare", StageOutcome.UP_TO_DATE).record() == {
        "stage": "prepare", "outcome": "skipped (up to date)", "seconds": 0.0}


def test_failure_text_starts_at_the_stages_own_error_and_names_the_remote():
    lines = [f"line {i}" for i in range(20)] + ["ERROR [prepare]: pixels_finite: 1 NaN", "  fix: ..."]
    text = failure_text("prepare", 2, lines)
    assert text.splitlines() == ["stage 'prepare' failed (exit 2):", lines[-2], lines[-1]]
    # no ERROR line: the last 10 lines
    assert failure_text("prepare", 1, lines[:20]).splitlines()[1:] == lines[10:20]
    refused = ['ERROR: Could not connect to the endpoint URL: "http://127.0.0.1:9/slimline"']
    hinted = failure_text("prepare", 1, refused, URL, "storage").splitlines()
    assert hinted[1].startswith(f"remote unreachable: {URL}") and hinted[2] == refused[0]
    assert is_transient("\n".join(refused)) and is_transient(f"ERROR: {LOCKED}. Most likely ...")
    assert not is_transient("ERROR [prepare]: pixels_finite")


def test_repro_args():
    assert repro_args("prune@layer") == ["repro", "--single-item", "prune@layer"]
    assert repro_args("a", force=True, pull=True, no_run_cache=True) == [
        "repro", "--single-item", "a", "--pull", "--allow-missing", "--force", "--no-run-cache"]


@pytest.fixture
def project(tmp_path):
    """One stage: out.txt from in.txt, and report.txt beside it (standing in for a `cache: false`
    output, which would turn DVC's run cache off); `fail` in in.txt fails it."""
    code = ("import pathlib, sys; t = pathlib.Path('in.txt').read_text(); "
            "pathlib.Path('report.txt').write_text('report ' + t); "
            "sys.exit('ERROR [copy]: bad input') if 'fail' in t else pathlib.Path('out.txt').write_text(t)")
    dvc("init", "--no-scm", "-q", cwd=tmp_path)
    (tmp_path / "in.txt").write_text("one")
    stage = {"cmd": f'{sys.executable} -c "{code}"', "deps": ["in.txt"], "outs": ["out.txt"]}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"copy": stage}}))
    return tmp_path


def test_one_stage_runs_restores_from_the_run_cache_and_fails_cleanly(project, caplog):
    from dvc.repo import Repo

    with Repo(str(project)) as repo:
        assert stage_order(repo) == ["copy"]
        with pytest.raises(UnknownStage, match="unknown stage"):
            stage_order(repo, ["nope"])
    seen = []
    run = run_stage(project, "copy", on_line=seen.append)
    assert run.outcome is StageOutcome.RAN and (project / "out.txt").read_text() == "one"
    assert any("Running stage 'copy'" in line for line in seen)

    (project / "in.txt").write_text("two")
    assert run_stage(project, "copy").outcome is StageOutcome.RAN
    (project / "in.txt").write_text("one")  # a version DVC has run before
    assert run_stage(project, "copy").outcome is StageOutcome.RUN_CACHE

    report_before = (project / "report.txt").read_text()
    (project / "in.txt").write_text("fail")
    with caplog.at_level(logging.INFO, logger="slimline.dvc_runner"):
        failed = run_stage(project, "copy", uncached=[str(project / "report.txt")])
    assert failed.outcome is StageOutcome.FAILED and failed.rc != 0 and not failed.transient
    assert failed.message.splitlines()[0] == f"stage 'copy' failed (exit {failed.rc}):"
    assert "ERROR [copy]: bad input" in failed.message
    # what the failed run deleted or overwrote is back: the cached output from DVC's cache,
    # the rest from the snapshot
    assert (project / "out.txt").read_text() == "one"
    assert (project / "report.txt").read_text() == report_before != "report fail"
    assert "copy: restored the previous outputs" in caplog.text


class Stop(BaseException):
    """Stands in for Prefect's TerminationSignal (a BaseException)."""


def test_a_stop_whose_exception_was_lost_still_stops_the_stage(tmp_path, caplog):
    """A SIGTERM handler's exception can land in a finalizer, where Python drops it; the
    run must stop anyway: the watch raises it again and the stage's group is stopped."""
    import os
    import signal

    code = ("import os, pathlib, time; pathlib.Path('pid').write_text(str(os.getpid())); "
            "[(print('line', i, flush=True), time.sleep(0.05)) for i in range(1200)]")
    dvc("init", "--no-scm", "-q", cwd=tmp_path)
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(
        {"stages": {"long": {"cmd": f"{sys.executable} -c \"{code}\"", "outs": ["never.txt"]}}}))
    calls = []

    def handler(sig, frame):  # the first exception goes missing, as in a finalizer
        calls.append(sig)
        if len(calls) > 1:
            raise Stop

    def on_line(line):
        if line.startswith("line 2") and not calls:
            os.kill(os.getpid(), signal.SIGTERM)

    old = signal.signal(signal.SIGTERM, handler)
    try:
        with caplog.at_level(logging.WARNING, logger="slimline.dvc_runner"), pytest.raises(Stop):
            run_stage(tmp_path, "long", on_line=on_line)
    finally:
        signal.signal(signal.SIGTERM, old)
    assert calls == [signal.SIGTERM, signal.SIGTERM]
    assert "long: SIGTERM arrived but did not stop the run" in caplog.text
    assert "long: stopping the stage (process group" in caplog.text
    with pytest.raises(ProcessLookupError):
        os.kill(int((tmp_path / "pid").read_text()), 0)


def test_the_watch_passes_signals_on_to_the_wakeup_fd_set_before_it():
    """A wakeup fd set before the watch hears what the watch read, and is back after it."""
    import os
    import signal

    from slimline.dvc_runner import SignalWatch

    outer_r, outer_w = os.pipe()
    os.set_blocking(outer_r, False)
    os.set_blocking(outer_w, False)
    old = signal.signal(signal.SIGTERM, lambda sig, frame: None)
    before = signal.set_wakeup_fd(outer_w)
    try:
        with SignalWatch() as watch:
            assert watch.missed() is None  # a new watch starts empty
            signal.raise_signal(signal.SIGTERM)
            assert watch.missed() == signal.SIGTERM
        assert os.read(outer_r, 16) == bytes([signal.SIGTERM])
        assert signal.set_wakeup_fd(outer_w) == outer_w
    finally:
        signal.set_wakeup_fd(before)
        signal.signal(signal.SIGTERM, old)
        os.close(outer_r)
        os.close(outer_w)


def test_dvc_reads_the_lock_file_with_the_c_parser_and_the_same_result():
    """Every dvc command parses dvc.yaml, dvc.lock and params.yaml with ruamel's safe loader,
    which is C only with ruamel.yaml.clib (pyproject.toml: ruamel.yaml 0.19.1 no longer
    installs it). The C parser reads our lock file as ruamel's pure-Python one does."""
    from dvc.utils.serialize import parse_yaml
    from ruamel.yaml import YAML

    from tests.support.project import ROOT

    assert YAML(typ="safe").Parser.__name__ == "CParser", "pip install -c constraints.txt ruamel.yaml.clib"
    text = (ROOT / "dvc.lock").read_text()
    assert parse_yaml(text, "dvc.lock") == YAML(typ="safe", pure=True).load(text)
