"""The committed dvc.lock reproduces bit for bit in a fresh clone (portable numerics)."""
import yaml

from tests.support.committed_lock import STAGES
from tests.support.project import ROOT


def test_fresh_clone_reproduces_committed_hashes_bit_for_bit(committed_repro):
    """The committed dvc.lock (default config, portable numerics) is reproduced exactly on any
    x86-64 CPU with AVX2+FMA, whichever made it, for the data and the baseline (later stages
    are covered on the tiny config: their full default run would cost minutes of CI)."""
    committed = yaml.safe_load((ROOT / "dvc.lock").read_text())["stages"]
    assert committed["train_baseline"]["params"]["params.yaml"]["train"]["numerics"] == "portable"
    now = yaml.safe_load((committed_repro / "dvc.lock").read_text())["stages"]
    for stage in STAGES:
        assert now[stage] == committed[stage], f"{stage} differs from the committed dvc.lock"
