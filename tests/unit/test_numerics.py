"""train.numerics: the pins, their checks, and bit-identical training under CPU limits."""
import subprocess
import sys

import pytest

from slimline import numerics
from tests.support.project import ROOT, run_env


def test_portable_pins_and_fast_drops_only_inherited_pins():
    env = numerics.pin_env("portable", {"MKL_ENABLE_INSTRUCTIONS": "AVX2", "ATEN_CPU_CAPABILITY": "avx512"})
    assert env["ATEN_CPU_CAPABILITY"] == "avx2" and env["MKL_CBWR"] == "COMPATIBLE"
    assert env["OMP_DYNAMIC"] == env["MKL_DYNAMIC"] == "FALSE"
    child = dict(env, MKL_CBWR="AVX512")  # a user's own setting after the pin
    numerics.pin_env("fast", child)
    assert "ATEN_CPU_CAPABILITY" not in child and "OMP_DYNAMIC" not in child
    assert child["MKL_CBWR"] == "AVX512" and child["MKL_ENABLE_INSTRUCTIONS"] == "AVX2"
    assert not any(k.startswith("SLIMLINE") for k in child)


def test_mode_comes_from_the_stage_params_file(tmp_path):
    fast = tmp_path / "fast.yaml"
    fast.write_text("train:\n  numerics: fast\n")
    assert numerics.mode_from_params(fast) == "fast"
    assert numerics._params_arg(["-m", "--params", str(fast)]) == str(fast)
    assert numerics._params_arg([f"--params={fast}"]) == str(fast)
    assert numerics._params_arg(["--method", "layer"]) == "params.yaml"
    # unreadable or invalid: the default, and the params check names the problem later
    (tmp_path / "bad.yaml").write_text("train: [unclosed\n")
    (tmp_path / "typo.yaml").write_text("train:\n  numerics: fsat\n")
    for name in ("bad.yaml", "typo.yaml", "missing.yaml"):
        assert numerics.mode_from_params(tmp_path / name) == "portable"


def test_cpu_info_names_the_cpu_and_its_vector_isa():
    info = numerics.cpu_info()
    assert info["model"]
    if sys.platform.startswith("linux"):
        assert info["vendor"] and "sse4_2" in info["isa"] and info["isa"] == sorted(info["isa"])


def test_portable_dropout_draws_from_torchs_own_generator():
    import torch
    import torch.nn.functional as F

    state = numerics.apply("portable", 1)  # this test process is pinned portable (conftest)
    assert state["portable_dropout"] and not state["onednn_conv"] and not state["nnpack_conv"]
    assert state["aten_capability"] == "AVX2" and state["mkl_branch"] in (None, "COMPATIBLE")
    torch.manual_seed(3)
    kept = F.dropout(torch.ones(64, 50), p=0.3, training=True) != 0
    torch.manual_seed(3)
    assert torch.equal(kept, torch.rand(64, 50) < 0.7)
    assert 0.6 < kept.float().mean() < 0.8


def test_portable_refuses_a_process_whose_torch_loaded_unpinned(tmp_path):
    code = ("import torch, slimline.training.loop as t\n"
            "try:\n    t.seed_everything(0, 1, 'portable')\n"
            "except Exception as e:\n    print(type(e).__name__, e)\n")
    env = run_env()
    env.pop("SLIMLINE_NUMERICS_PINNED", None)
    for name in numerics.PORTABLE_ENV:
        env.pop(name, None)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                         text=True, check=True).stdout
    assert out.startswith("StageError") and "loaded before its CPU math was pinned" in out
    assert "train.numerics: fast" in out


@pytest.mark.skipif(not {"avx2", "fma"} <= set(numerics.cpu_info()["isa"]), reason="needs AVX2+FMA")
def test_portable_training_ignores_the_cpus_isa_limits(tmp_path, monkeypatch):
    """Capping ATen's and oneDNN's ISA (what an older CPU would do) changes nothing in
    portable mode: fit() gives the same weights, bit for bit. The uncapped run is this
    test process's own (pinned portable by conftest, as a stage is): one child process
    fewer, and a comparison across two processes that began differently."""
    import torch

    from benchmarks.numerics import child, params_file, run_child

    params = params_file(tmp_path, "portable", threads=1)
    monkeypatch.chdir(ROOT)  # the data the child reads, from its cwd (benchmarks/fit_setup.py)
    threads = torch.get_num_threads()
    try:
        plain = child(str(params), samples=256, epochs=1)
    finally:
        torch.set_num_threads(threads)  # fit() set 1 for this whole process
    capped = run_child(params, samples=256, epochs=1,
                       env={"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "AVX",
                            "MKL_ENABLE_INSTRUCTIONS": "AVX"})
    assert plain["hash"] == capped["hash"]
    assert capped["aten_capability"] == "AVX2" and not capped["onednn_conv"]
