"""The committed dvc.lock reproduces bit for bit in a fresh clone (portable numerics).

Its own file, so that it needs no shared fixture and starts while the tiny pipeline is
still being built (see the collection order in tests/conftest.py)."""
import pytest
import yaml

from tests.support.project import ROOT, copy_project, dvc


def test_fresh_clone_reproduces_committed_hashes_bit_for_bit(tmp_path):
    """The committed dvc.lock (default config, portable numerics) is reproduced exactly on any
    x86-64 CPU with AVX2+FMA, whichever made it, for the data and the baseline (later stages
    are covered on the tiny config: their full default run would cost minutes of CI)."""
    if not (ROOT / "dvc.lock").exists():
        pytest.skip("no committed dvc.lock yet")
    root = copy_project(tmp_path / "fresh")
    committed = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    assert committed["train_baseline"]["params"]["params.yaml"]["train"]["numerics"] == "portable"
    dvc("repro", "train_baseline", cwd=root)
    now = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    for stage in ("prepare", "train_baseline"):
        assert now[stage] == committed[stage], f"{stage} differs from the committed dvc.lock"
