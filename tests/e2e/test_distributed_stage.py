"""Training stages on two ranks under torchrun: resumed bit-identically through DVC after the
stage is killed, with no rank left behind, and a dead rank ends the stage with its error
instead of a hang."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from slimline.errors import StageError
from slimline.training import distributed
from tests.support.project import ROOT, dvc, lock_outs, run_env, update_params
from tests.support.tiny import DDP, DDP_LOCK, DDP_REFRESH

STAGE = [sys.executable, "-m", "tasks.train_baseline", "--data", "data/prepared", "--out", "models/baseline"]


def _stage_processes(root: Path) -> list[int]:
    """The processes still running this stage in root: itself, torchrun's agent, the ranks."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if b"tasks.train_baseline" in Path(f"/proc/{pid}/cmdline").read_bytes() \
                    and Path(f"/proc/{pid}/cwd").resolve() == root.resolve():
                found.append(int(pid))
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            pass
    return found


def test_two_ranks_reproduce_after_the_stage_is_killed(pipeline_copy):
    """A 2-rank run whose stage process is SIGKILLed after epoch 1 (its ranks must die with
    it), resumed by `dvc repro` to the end, gives the weights of an uninterrupted 2-rank run:
    tests/ddp.lock, made from the same tiny data (dropout on: each rank draws its own masks,
    and the resume must restore every rank's stream)."""
    root = pipeline_copy
    update_params(root, DDP)
    proc = subprocess.Popen(STAGE, cwd=root, env=run_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    resume, deadline = root / ".slimline" / "resume", time.monotonic() + 120
    while not list(resume.glob("train_baseline-*/epoch-0001.pt")):
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    assert "training on 2 ranks" in proc.communicate(timeout=60)[0]
    deadline = time.monotonic() + 30
    while _stage_processes(root):
        assert time.monotonic() < deadline, f"processes outlived the stage: {_stage_processes(root)}"
        time.sleep(0.05)
    assert not list(resume.glob("train_baseline-*/epoch-0003.pt"))

    # --force: not DVC's run cache, which holds the tiny build's one-process baseline
    rerun = dvc("repro", "--force", "--single-item", "train_baseline", cwd=root)
    assert "resuming from checkpoint after epoch 1" in rerun.stdout, rerun.stdout[-2000:]
    committed = yaml.safe_load(DDP_LOCK.read_text())["models/baseline"]
    assert lock_outs(root)["models/baseline"] == committed, (
        f"the 2-rank baseline differs from tests/ddp.lock; if a change is meant to alter it, "
        f"run {DDP_REFRESH}")


@pytest.mark.parametrize("how, message", [
    ("error", "rank 1 of 2 failed: loss became nan in epoch 2"),
    ("kill", "a rank of 2 died without an error of its own"),
])
def test_a_dead_rank_ends_the_stage_with_its_error(how, message, tmp_path, monkeypatch):
    """Real torchrun, ranks that need no torch: rank 1 fails while rank 0 waits for it."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    pidfile = tmp_path / "rank0.pid"
    start = time.monotonic()
    with pytest.raises(StageError, match=message):
        distributed.relaunch("fake", 2, 2, [how, str(pidfile)], module="tests.support.fake_ranks")
    assert time.monotonic() - start < 60  # torchrun stopped rank 0: no hang
    if pidfile.exists():  # rank 0 got that far before its peer failed: it must be gone
        assert not Path(f"/proc/{pidfile.read_text()}").exists()
