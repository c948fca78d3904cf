"""CPU numerics: `train.numerics: portable` makes training bit-identical on any x86-64 CPU.

Four libraries under torch pick their CPU code at run time, and each choice changes
float rounding, hence the trained weights:
- ATen picks kernels by the CPU's vector width (AVX2 or AVX-512): pinned to AVX2
  with ATEN_CPU_CAPABILITY, read once at torch's first dispatch.
- MKL (fp32 matmul, im2col convolution, exp/log) dispatches by ISA *and vendor*. Its
  reproducible mode takes a fixed branch, but only `COMPATIBLE` is honoured on non-Intel
  CPUs: MKL_CBWR=AVX2 silently falls back to the AUTO branch on AMD (check with
  `mkl_branch()`), so that one is pinned to COMPATIBLE. MKL_DYNAMIC/OMP_DYNAMIC off keep
  the thread count, hence the reduction order, what train.num_threads says.
- oneDNN convolutions choose their blocking from the ISA and cache sizes, which no
  setting pins; so do NNPACK's (its input-channel blocks come from the L1/L2/L3
  sizes), and torch sends convolutions of batches >= 16 to NNPACK when oneDNN is off.
  Portable mode turns both off: torch then convolves by im2col + MKL.
And one choice is by vendor alone: torch's CPU `bernoulli_(p)`, which dropout uses,
draws from MKL's generator on Intel and from torch's own elsewhere. Portable mode
replaces it with a draw from torch's own generator everywhere.

The environment pins must be in place before torch is imported, so `tasks/__init__.py`
calls `pin_for_this_process()`: any `python -m tasks.<stage>` gets them, run by DVC, the
flow or by hand. `apply()` then finishes the job after import and checks that the pins
took effect. This module imports nothing heavy at import time.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

MODES = ("portable", "fast")
DEFAULT = "portable"
PROMISE = ("Bit-identical results across machines are promised only in `portable` mode "
           "(train.numerics), on x86-64 CPUs with AVX2 and FMA, for the same "
           "train.num_threads and the same torch build.")

# What portable mode sets before torch loads (see above). oneDNN needs no pin: it is off.
PORTABLE_ENV = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_CBWR": "COMPATIBLE",
    "MKL_DYNAMIC": "FALSE",
    "OMP_DYNAMIC": "FALSE",
}
# The pins this module set, so that a `fast` stage started from a portable process
# (a test, the flow) drops inherited pins but never the user's own settings.
_MARK = "SLIMLINE_NUMERICS_PINNED"
REQUIRED_FLAGS = ("avx2", "fma")


def mode_from_params(path: str | Path = "params.yaml") -> str:
    """train.numerics from a params file, read without validation (that comes later,
    with a readable error); anything unreadable means the default."""
    try:
        import yaml

        with open(path) as f:
            mode = ((yaml.safe_load(f) or {}).get("train") or {}).get("numerics", DEFAULT)
    except Exception:  # noqa: BLE001 - the stage's own params check reports a broken file properly
        return DEFAULT
    return mode if mode in MODES else DEFAULT


def _params_arg(argv: list[str]) -> str:
    """The stage's --params value (default params.yaml), found before argparse runs."""
    for i, a in enumerate(argv):
        if a == "--params" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--params="):
            return a.split("=", 1)[1]
    return "params.yaml"


def pin_env(mode: str, env: dict | None = None) -> dict:
    """Set (portable) or clear (fast) the pins in `env` (default: os.environ)."""
    env = os.environ if env is None else env
    for pin in filter(None, env.pop(_MARK, "").split(",")):
        name, _, value = pin.partition("=")
        if env.get(name) == value:  # inherited from a portable parent, not changed since
            del env[name]
    if mode == "portable":
        env.update(PORTABLE_ENV)
        env[_MARK] = ",".join(f"{k}={v}" for k, v in PORTABLE_ENV.items())
    return env


def pin_for_this_process() -> str | None:
    """Pin this process for the mode its params ask for, if torch is not loaded yet.
    Returns the mode pinned, or None when it is too late (apply() will say so)."""
    if "torch" in sys.modules:
        return None
    mode = mode_from_params(_params_arg(sys.argv))
    pin_env(mode)
    return mode


def cpu_info() -> dict:
    """The CPU's model, vendor and the ISA flags that decide kernel choice. One helper
    for every run record (and, later, the model card)."""
    info = {"model": None, "vendor": None, "isa": []}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "model name" and info["model"] is None:
                    info["model"] = value
                elif key == "vendor_id" and info["vendor"] is None:
                    info["vendor"] = value
                elif key == "flags":
                    flags = set(value.split())
                    info["isa"] = sorted(f for f in flags if f.startswith(("avx", "amx"))
                                         or f in ("fma", "f16c", "sse4_2"))
                    break
    except OSError:  # not Linux: the platform module is all there is
        import platform

        info["model"] = platform.processor() or platform.machine()
    return info


def mkl_branch() -> str | None:
    """MKL's active reproducibility branch (AUTO, COMPATIBLE, AVX2, ...) or None when
    torch has no MKL, or its build does not export the query."""
    import ctypes

    import torch

    names = {0: "OFF", 1: "OFF", 2: "AUTO", 3: "COMPATIBLE", 4: "SSE2", 6: "SSSE3", 7: "SSE4_1",
             8: "SSE4_2", 9: "AVX", 10: "AVX2", 12: "AVX512", 13: "AVX512_E1"}
    if not torch.backends.mkl.is_available():
        return None
    try:
        lib = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"))
        query = lib.mkl_serv_cbwr_get
    except (OSError, AttributeError):
        return None
    torch.mm(torch.ones(2, 2), torch.ones(2, 2))  # MKL reads MKL_CBWR on first use
    code = query(1)  # MKL_CBWR_BRANCH
    return names.get(code & 0xFFFF, str(code)) + (",STRICT" if code & 0x10000 else "")


_BERNOULLI_LIB = None


def _portable_bernoulli_(self, p=0.5, generator=None):
    import torch

    # torch's CPU uniform draw is one serial kernel over its own Mersenne Twister:
    # the same numbers on every CPU, whatever the vendor or vector width.
    u = torch.rand(self.shape, generator=generator, dtype=torch.float32)
    return self.copy_(u < p)


def _replace_bernoulli() -> None:
    global _BERNOULLI_LIB
    if _BERNOULLI_LIB is None:
        import torch

        _BERNOULLI_LIB = torch.library.Library("aten", "IMPL")
        _BERNOULLI_LIB.impl("bernoulli_.float", _portable_bernoulli_, "CPU")


def apply(mode: str, num_threads: int) -> dict:
    """After torch is imported: finish pinning (oneDNN off, vendor-free dropout, ORT's
    default thread count) and check the environment pins took effect. Returns the
    state for the run record."""
    import torch

    if mode not in MODES:
        raise ValueError(f"train.numerics: {mode!r} is not one of {', '.join(MODES)}")
    state = state_now()
    if mode == "portable":
        from slimline.errors import StageError

        isa = cpu_info()["isa"]
        missing = [f for f in REQUIRED_FLAGS if f not in isa]
        if missing and isa:  # no flags at all: not Linux, nothing to check against
            raise StageError(f"train.numerics is 'portable', which needs a CPU with AVX2 and FMA; "
                             f"this one lacks {', '.join(missing)}: set train.numerics: fast")
        if state["aten_capability"] != "AVX2" or state["mkl_branch"] not in (None, "COMPATIBLE"):
            raise StageError(
                f"train.numerics is 'portable' but torch was loaded before its CPU math was pinned "
                f"(ATen {state['aten_capability']}, MKL branch {state['mkl_branch']}): import "
                f"`tasks` before torch (stages run as `python -m tasks.<stage>` do), or set "
                f"train.numerics: fast")
        torch.backends.mkldnn.enabled = False
        torch.backends.nnpack.set_flags(False)
        _replace_bernoulli()
        # ONNX Runtime sessions that don't set their threads (the static-int8 calibrator)
        # split their sums by the thread count: make it the same on every machine.
        os.environ["ORT_INTRA_OP_NUM_THREADS"] = str(num_threads)
        state = state_now()
    state["numerics"] = mode
    state["portable"] = mode == "portable"
    return state


def state_now() -> dict:
    """What the CPU math of this process actually is, for the run record."""
    import torch

    return {"aten_capability": torch.backends.cpu.get_cpu_capability(),
            "mkl_branch": mkl_branch(),
            "onednn_conv": bool(torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled),
            "nnpack_conv": bool(torch._nnpack_available() and torch._C._get_nnpack_enabled()),
            "portable_dropout": _BERNOULLI_LIB is not None}


def record(state: dict, device) -> dict:
    """The run record's numerics entries: the mode, what it pinned, and what is promised."""
    on_cpu = str(device) == "cpu"
    rec = {k if k == "numerics" else f"numerics_{k}": v for k, v in state.items() if k != "portable"}
    rec["numerics_bit_identical_across_cpus"] = bool(state["portable"] and on_cpu)
    if not on_cpu:
        rec["numerics_note"] = "trained on a GPU: portable mode pins CPU math only"
    return rec
