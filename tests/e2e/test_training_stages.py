"""Training stages as processes: resume after a real SIGKILL is bit-identical, and a missing
input names the stage to run. (In-process training tests: tests/unit/test_training.py.)"""
import signal
import subprocess
import sys
import time

from tests.support.project import ROOT, run_env, sh, tree_digest, update_params


def test_resume_after_sigkill_is_bit_identical(pipeline_copy):
    """Kill a real training process once the epoch-2 checkpoint exists, rerun, compare."""
    root = pipeline_copy
    # The tiny build's data, a small network (resume is what is tested, not the model) and
    # more epochs than the tiny config's 2: the run is still going after epoch 2.
    update_params(root, {"train": {"epochs": 8, "num_threads": 1},
                         "baseline": {"conv_channels": [8, 16], "hidden": [32]}})
    cmd = [sys.executable, "-m", "tasks.train_baseline", "--data", "data/prepared",
           "--out", "models/baseline"]
    sh(cmd, root)
    reference = tree_digest(root / "models" / "baseline")
    curves = tree_digest(root / "dvclive" / "train_baseline")

    proc = subprocess.Popen(cmd, cwd=root, env=run_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    resume = root / ".slimline" / "resume"
    deadline = time.monotonic() + 300
    while not list(resume.glob("train_baseline-*/epoch-0002.pt")):
        assert proc.poll() is None, "training ended before the epoch-2 checkpoint appeared"
        assert time.monotonic() < deadline
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    ckpts = sorted(p.name for p in resume.glob("train_baseline-*/epoch-*.pt"))
    assert ckpts and ckpts[-1] < "epoch-0008.pt", ckpts

    rerun = sh(cmd, root)
    assert "resuming from checkpoint after epoch" in rerun.stdout
    assert tree_digest(root / "models" / "baseline") == reference
    assert tree_digest(root / "dvclive" / "train_baseline") == curves
    assert not list(resume.glob("train_baseline-*"))  # removed after success


def test_missing_prepared_data_names_the_stage_to_run(tmp_path):
    (tmp_path / "params.yaml").write_text("{}\n")
    proc = sh([sys.executable, "-m", "tasks.train_baseline", "--data", "data/prepared", "--out",
               "models/baseline"], tmp_path, check=False, PYTHONPATH=str(ROOT))
    assert proc.returncode == 2
    assert "run the `prepare` stage first" in proc.stderr and "Traceback" not in proc.stderr
