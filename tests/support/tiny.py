"""The tiny config: the real ML pipeline, small enough to build once per test run, and the
lock of its output hashes (tests/tiny.lock) that makes each stage's determinism an end-to-end
check at no extra cost.

    python -m tests.support.tiny build DEST     # build_tiny, then DEST.ready (or DEST.failed)
    python -m tests.support.tiny lock [DEST]    # tests/tiny.lock from a build (DEST, or a new one)
    python -m tests.support.tiny lock-ddp [DEST]  # tests/ddp.lock: its baseline on 2 ranks
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from tests.support.background import build_main
from tests.support.project import ROOT, commit, copy_project, lock_outs, run_env

# Small enough for CI, large enough that every class has examples in every split.
TINY = {
    "data": {"limit": 400, "min_per_class": 5},
    "train": {"epochs": 2, "num_threads": 1},
    # Feature KD on, so the shared pipeline covers the three-run distill stage (the default
    # `off` is what the committed pipeline runs).
    "distill": {"features": "auto"},
    "prune": {"steps": 1, "finetune_epochs": 1, "ablation_epochs": 0},
    # Barely trained models have near-tied logits, and the 0.5 pt budget against their own
    # fp32 source would send static int8 into its sensitivity scan on every run, for nothing.
    "quantize": {"calibration_batches": 2, "calibration_batch_size": 16, "min_agreement": 0.9,
                 "max_accuracy_drop": 0.5},
    # QAT on, for the distilled student (with its feature KD) and a structured-pruned model.
    "qat": {"enabled": True, "models": ["student"], "pruned": ["structured"], "epochs": 1},
    "evaluate": {"warmup": 2, "repeats": 20},
    # Tiny models (~40% accurate, ~20 us) swap places on timing noise alone, which the
    # gate would rightly call a regression; its rules are tested on fixed reports
    # (tests/unit/test_flow_parts.py) and through the flow on the toy project.
    "gate": {"max_latency_increase": 100.0, "max_accuracy_drop": 0.99},
}

LOCK = ROOT / "tests" / "tiny.lock"
# The outputs whose bytes the portable numerics promise (docs/numerics.md): the data and
# every model up to quantize. Not models/ship: evaluate picks it by measured latency.
PORTABLE = ("data/", "models/")
MEASURED = ("models/ship",)
REFRESH = "python -m tests.support.tiny lock"
# The baseline trained on two ranks under torchrun from the tiny build's data
# (tests/e2e/test_distributed_stage.py): its hash, so that a resumed 2-rank run is compared
# with an uninterrupted one without paying for that run in every suite.
DDP = {"train": {"distributed": {"nproc_per_node": 2}, "epochs": 3}, "baseline": {"dropout": 0.3}}
DDP_LOCK = ROOT / "tests" / "ddp.lock"
DDP_REFRESH = "python -m tests.support.tiny lock-ddp"


def build_tiny(dest: Path) -> Path:
    """A copy on the TINY config after one full `dvc repro`, committed: the finished
    pipeline the end-to-end tests start from. repro.log beside it holds dvc's output."""
    root = copy_project(dest, TINY)
    from slimline.stage import die_with_parent

    repro = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=root, env=run_env(),
                           capture_output=True, text=True, preexec_fn=die_with_parent)
    (root.parent / "repro.log").write_text(repro.stdout + repro.stderr)
    if repro.returncode:
        raise RuntimeError(f"dvc repro of the tiny pipeline failed:\n{(repro.stdout + repro.stderr)[-3000:]}")
    commit(root, "tiny repro")
    return root


def portable_hashes(root: Path) -> dict[str, str]:
    """{data/ or models/ output: md5} of a finished build, evaluate's ship bundle left out."""
    return {p: md5 for p, md5 in sorted(lock_outs(root).items())
            if p.startswith(PORTABLE) and not p.startswith(MEASURED)}


def tiny_prepared(n: int = 60, seed: int = 0):
    """Tiny random data for training tests: n 12x12 grayscale images per split, 3 classes."""
    import numpy as np

    from slimline.data.dataset import Prepared

    rng = np.random.default_rng(seed)
    splits = {name: (rng.integers(0, 256, (n, 1, 12, 12)).astype(np.uint8), np.arange(n) % 3)
              for name in ("train", "val", "test")}
    return Prepared(splits=splits, meta={"input_shape": [1, 12, 12], "num_classes": 3,
                                         "mean": [127.0], "std": [70.0]})


def train_ddp(root: Path) -> str:
    """Train root's baseline on DDP's two ranks, uninterrupted, through DVC; its md5."""
    from tests.support.project import dvc, update_params

    update_params(root, DDP)
    dvc("repro", "--force", "--single-item", "train_baseline", cwd=root)
    return lock_outs(root)["models/baseline"]


def main(argv: list[str]) -> None:
    if argv[:1] == ["lock-ddp"] and len(argv) <= 2:
        import tempfile

        out = Path(argv[1]) if len(argv) == 2 else build_tiny(Path(tempfile.mkdtemp()) / "proj")
        DDP_LOCK.write_text(f"# The tiny build's baseline trained on 2 ranks (tests/support/tiny.py DDP). A "
                            f"change meant to\n# alter it refreshes this file: {DDP_REFRESH}\n"
                            f"models/baseline: {train_ddp(out)}\n")
        print(f"wrote {DDP_LOCK}")
        return
    if argv[:1] == ["lock"] and len(argv) <= 2:
        import tempfile

        out = Path(argv[1]) if len(argv) == 2 else build_tiny(Path(tempfile.mkdtemp()) / "proj")
        text = ("# The tiny build's data and model hashes (tests/support/tiny.py). A change meant to\n"
                f"# alter them refreshes this file: {REFRESH}\n")
        LOCK.write_text(text + yaml.safe_dump(portable_hashes(out), sort_keys=True))
        print(f"wrote {LOCK}")
        return
    build_main(argv, build_tiny, __doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
