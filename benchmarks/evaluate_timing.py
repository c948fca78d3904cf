"""Are evaluate's latencies honest? Its p50s against fresh-process timings of the same files.

    python -m benchmarks.evaluate_timing [--root .] [--trials 3] [--standalone-repeats 2000]

Needs a built pipeline (models/onnx from `dvc repro quantize`). For every ONNX variant on
ONNX Runtime (evaluate's reference runtime; benchmarks/runtimes.py compares OpenVINO), side
by side in one run, `--trials` times in turn. A shared machine has slow spells that
last seconds and only ever add time, so each method's best trial is compared (the least
noisy estimate of what the file costs):
- standalone: a fresh Python process that loads only that file and times it with the
  same session options (200 warm-up runs, then the median of --standalone-repeats);
- stage: slimline.evaluation.measure.time_rounds, as the evaluate stage runs it (5 rounds,
  variants taking turns in blocks of 20 calls, median of the round p50s);
- all-alive: the earlier way, every session created up front and alive at once, two
  rounds in opposite orders, the best p50 of the two.
Prints each method's p50 in microseconds and its ratio to standalone; the acceptance
bar is stage/standalone within 1.2 for every variant. Also prints the runtime floor.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

CHILD = """
import sys, json
sys.path.insert(0, sys.argv[4])  # this checkout's code, not the --root copy's
from slimline.runtime.onnxruntime import latency_ms, session
path, shape, repeats = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
sess = session(path, threads=1)
print(json.dumps(latency_ms(sess, tuple(shape), batch=1, warmup=200, repeats=repeats)["p50"]))
"""


def standalone(path: Path, shape, repeats: int) -> float:
    out = subprocess.run([sys.executable, "-c", CHILD, str(path), json.dumps(list(shape)), str(repeats),
                          str(ROOT)],
                         capture_output=True, text=True, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    return float(out.stdout.strip().splitlines()[-1])


def all_alive(files: dict[str, Path], shape, warmup: int, repeats: int) -> dict[str, float]:
    from slimline.runtime.onnxruntime import latency_ms, session

    sessions = {n: session(p, threads=1) for n, p in files.items()}
    p50 = {n: [] for n in files}
    names = list(files)
    for order in (names, names[::-1]):
        for n in order:
            p50[n].append(latency_ms(sessions[n], shape, batch=1, warmup=warmup, repeats=repeats)["p50"])
    return {n: min(v) for n, v in p50.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, default=Path("."))
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--standalone-repeats", type=int, default=2000)
    args = ap.parse_args()
    os.chdir(args.root)
    import torch

    from slimline.data.dataset import load_prepared
    from slimline.evaluation.measure import FLOOR, time_rounds
    from slimline.params import load_params
    from slimline.runtime import registry

    cfg = load_params("params.yaml").evaluate
    torch.set_num_threads(cfg.threads)
    shape = load_prepared(Path("data/prepared")).input_shape
    manifest = json.loads(Path("models/onnx/manifest.json").read_text())
    files = {e["name"]: Path("models/onnx") / e["file"] for e in manifest["variants"]}

    alone, stage, old, floor = {n: [] for n in files}, {n: [] for n in files}, {n: [] for n in files}, []
    for _ in range(args.trials):
        for n, p in files.items():
            alone[n].append(standalone(p, shape, args.standalone_repeats))
        # loaded as the stage loads them (registry), and freed before all-alive loads its own
        rounds = time_rounds({FLOOR: registry.floor("onnxruntime", shape, cfg.threads).caller(1)} | {
            n: registry.load("onnxruntime", p, shape, cfg.threads).caller(1) for n, p in files.items()}, cfg)
        floor.append(float(np.median(rounds[FLOOR]["p50"])))
        for n, t in all_alive(files, shape, cfg.warmup, cfg.repeats).items():
            stage[n].append(float(np.median(rounds[n]["p50"])))
            old[n].append(t)

    print(f"{'variant':34s} {'standalone':>10s} {'stage':>8s} {'ratio':>6s} {'all-alive':>9s} {'ratio':>6s}")
    worst = 0.0
    for n in files:
        ref, st, ol = (min(x[n]) * 1e3 for x in (alone, stage, old))
        worst = max(worst, st / ref)
        print(f"{n:34s} {ref:10.1f} {st:8.1f} {st / ref:6.2f} {ol:9.1f} {ol / ref:6.2f}")
    floor = min(floor) * 1e3
    print(f"runtime floor (one Relu op, same options): {floor:.1f} us; rounds {cfg.rounds}, "
          f"warmup {cfg.warmup}, repeats {cfg.repeats}; best of {args.trials} trials")
    print(f"worst stage/standalone ratio: {worst:.2f} (target <= 1.20): "
          f"{'MET' if worst <= 1.2 else 'NOT MET'}")


if __name__ == "__main__":
    main()
