"""A training stage on two ranks under torchrun, through DVC: reproducible, and resumed
bit-identically after the stage or one of its ranks is killed, with no rank left behind."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.support.project import dvc, run_env, tree_digest, update_params

STAGE = [sys.executable, "-m", "tasks.train_baseline", "--data", "data/prepared", "--out", "models/baseline"]


def _stage_processes(root: Path) -> dict[int, bytes]:
    """{pid: environment} of the processes still running this stage in root: the stage
    itself, torchrun's agent and the ranks."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if b"tasks.train_baseline" in Path(f"/proc/{pid}/cmdline").read_bytes() \
                    and Path(f"/proc/{pid}/cwd").resolve() == root.resolve():
                found[int(pid)] = Path(f"/proc/{pid}/environ").read_bytes()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            pass
    return found


def _kill_after(root: Path, epoch: int, rank: int | None) -> subprocess.CompletedProcess:
    """Run the stage, SIGKILL it (rank None) or that rank once the epoch's checkpoint is
    written, and wait until none of its processes is left."""
    proc = subprocess.Popen(STAGE, cwd=root, env=run_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    resume, deadline = root / ".slimline" / "resume", time.monotonic() + 120
    while not list(resume.glob(f"train_baseline-*/epoch-{epoch:04d}.pt")):
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.005)
    if rank is None:
        os.kill(proc.pid, signal.SIGKILL)
    else:
        (pid,) = [p for p, env in _stage_processes(root).items() if f"\0RANK={rank}\0".encode() in env]
        os.kill(pid, signal.SIGKILL)
    out, _ = proc.communicate(timeout=60)  # a dead rank ends the stage: no hang
    deadline = time.monotonic() + 30
    while _stage_processes(root):
        assert time.monotonic() < deadline, f"processes outlived the stage: {_stage_processes(root)}"
        time.sleep(0.05)
    assert not list(resume.glob("train_baseline-*/epoch-0003.pt"))
    return subprocess.CompletedProcess(STAGE, proc.returncode, out)


def test_two_ranks_resume_after_kills_bit_identically(pipeline_copy):
    """One uninterrupted run; then a run whose stage process is killed after epoch 1 (the
    ranks die with it), resumed and then killed again through one rank after epoch 2 (the
    stage ends with an error), and resumed by DVC to the end: the same weights."""
    root = pipeline_copy
    # dropout: each rank draws its own masks, and resume must restore every rank's stream
    update_params(root, {"train": {"distributed": {"nproc_per_node": 2}, "epochs": 3},
                         "baseline": {"dropout": 0.3}})
    first = dvc("repro", "train_baseline", cwd=root)
    assert "training on 2 ranks" in first.stdout, first.stdout[-2000:]
    reference = tree_digest(root / "models" / "baseline")

    assert _kill_after(root, 1, rank=None).returncode == -signal.SIGKILL
    failed = _kill_after(root, 2, rank=1)
    assert "resuming from checkpoint after epoch 1" in failed.stdout
    assert failed.returncode == 2, failed.stdout[-3000:]
    assert "ERROR [train_baseline]: a rank of 2 died without an error of its own" in failed.stdout

    rerun = dvc("repro", "--force", "train_baseline", cwd=root)  # not the run cache: resume
    assert "resuming from checkpoint after epoch 2" in rerun.stdout, rerun.stdout[-2000:]
    assert tree_digest(root / "models" / "baseline") == reference
