"""Cross-ISA evidence for `train.numerics`, from one machine.

    python -m benchmarks.numerics [--samples 2000] [--epochs 2]

Trains the baseline CNN with the pipeline's fit() (dropout, shifts, one-cycle SGD) in
fresh processes, once per setting below, in `portable` and in `fast` mode, and prints
the weight hash of each. The settings make this CPU behave like another one: a lower
ISA for ATen, MKL or oneDNN, or fewer cores. Portable mode must give one hash for all;
fast mode must not (which shows that the settings took effect).

Also used as the child process of benchmarks/train_loop.py (`--child`), which imports
this module, never the other way round.
"""
from __future__ import annotations

import tasks  # noqa: F401  (first: pins this process's CPU math for --params)

# isort: split

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent

# name -> (extra environment, command prefix)
SETTINGS = {
    "as is": ({}, []),
    "ATEN_CPU_CAPABILITY=default": ({"ATEN_CPU_CAPABILITY": "default"}, []),
    "MKL_ENABLE_INSTRUCTIONS=AVX": ({"MKL_ENABLE_INSTRUCTIONS": "AVX"}, []),
    "MKL_ENABLE_INSTRUCTIONS=AVX2": ({"MKL_ENABLE_INSTRUCTIONS": "AVX2"}, []),
    "ONEDNN_MAX_CPU_ISA=AVX2": ({"ONEDNN_MAX_CPU_ISA": "AVX2"}, []),
    "ONEDNN_MAX_CPU_ISA=AVX": ({"ONEDNN_MAX_CPU_ISA": "AVX"}, []),
    "one core (taskset -c 0)": ({}, ["taskset", "-c", "0"]),
}


def child(params_path: str, samples: int, epochs: int) -> dict:
    """Train once in this process; the weights' hash and the throughput of fit()."""
    import torch

    from benchmarks.fit_setup import load_data, new_model
    from slimline.params import load_params
    from slimline.training.checkpoint import CheckpointStore
    from slimline.training.loop import fit, seed_everything

    params = load_params(params_path)
    cfg = params.train.model_copy(update={"epochs": epochs, "device": "cpu"})
    (x, y), val = load_data(torch.device("cpu"))
    train = (x[:samples], y[:samples])
    state = seed_everything(cfg.seed, cfg.num_threads, cfg.numerics)
    model = new_model(params, tuple(x.shape[1:]), x.device)
    with tempfile.TemporaryDirectory() as tmp:
        result = fit(model, train, val, cfg, CheckpointStore(tmp), desc="numerics")
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().contiguous().numpy().tobytes())
    return {"hash": h.hexdigest()[:16], "samples_per_s": result.samples_seen / result.train_seconds,
            **{k: state[k] for k in ("numerics", "aten_capability", "mkl_branch", "onednn_conv")}}


def params_file(folder: Path, mode: str, threads: int | None = None) -> Path:
    """A copy of params.yaml with train.numerics (and optionally num_threads) set."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["train"]["numerics"] = mode
    if threads:
        raw["train"]["num_threads"] = threads
    path = folder / f"params-{mode}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def run_child(params: Path, samples: int, epochs: int, env: dict | None = None,
              prefix: list[str] | None = None) -> dict:
    cmd = [*(prefix or []), sys.executable, "-m", "benchmarks.numerics", "--child",
           "--params", str(params), "--samples", str(samples), "--epochs", str(epochs)]
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.params, args.samples, args.epochs)), flush=True)
        return
    from slimline.numerics import cpu_info

    cpu = cpu_info()
    print(f"CPU: {cpu['model']} ({cpu['vendor']}); ISA: {' '.join(cpu['isa'])}")
    print(f"baseline CNN, fit() on {args.samples} samples x {args.epochs} epochs per run\n")
    print("| setting | portable | fast |\n|---|---|---|")
    hashes: dict[str, set] = {"portable": set(), "fast": set()}
    with tempfile.TemporaryDirectory() as tmp:
        files = {m: params_file(Path(tmp), m) for m in hashes}
        for name, (env, prefix) in SETTINGS.items():
            row = {m: run_child(files[m], args.samples, args.epochs, env, prefix) for m in hashes}
            for m, r in row.items():
                hashes[m].add(r["hash"])
            print(f"| {name} | `{row['portable']['hash']}` | `{row['fast']['hash']}` |", flush=True)
    print(f"\nportable: {len(hashes['portable'])} distinct hash(es) over {len(SETTINGS)} settings "
          f"(target: 1)")
    print(f"fast: {len(hashes['fast'])} distinct hashes over {len(SETTINGS)} settings "
          f"(more than 1: the settings took effect)")


if __name__ == "__main__":
    main()
