"""ONNX Runtime against OpenVINO (f32) on the same ONNX files, timed as evaluate times them.

    python -m benchmarks.runtimes [--onnx models/onnx] [--frontier /tmp/frontier_resnet/onnx ...]
                                  [--rounds 5] [--sets 3]

Each folder's files (its manifest.json) are loaded on both runtimes and timed at batch 1
in one process, every (file, runtime) pair and both runtimes' floors taking turns in the
same rounds (slimline.runtime.registry and slimline.evaluation.measure.time_rounds, with
params.yaml's evaluate settings: exactly what the evaluate stage measures). Prints per
file each runtime's p50 in microseconds, ORT/OV (ratio of the medians, and its range over
the rounds), which runtime is faster by evaluate's rule (a 10% lead in 4 of 5 rounds,
slimline.evaluation.selection.beats; otherwise a tie), and, where the folder's
data/prepared is found (../data or ../../data), each runtime's test accuracy and their
top-1 agreement. The input shape comes from data/prepared, else from the ONNX input.

Then the isolation check, on the --onnx folder: does ONNX Runtime's timing move when
OpenVINO is in the same process? `--sets` sets of three fresh child processes, each set
in the other order than the last, all timing every file on ORT the same way: one never
imports openvino; one first loads and runs every file on OpenVINO, which stays loaded;
one also times OpenVINO in the same rounds, as evaluate does. Prints each file's ORT p50
in each (its best set: slow spells only add time) and the ratios to the first. `--sets 0`
skips it. The default run takes about a minute on 2 cores; a --frontier folder of
resnet18 files adds minutes.
"""
from __future__ import annotations

import tasks  # noqa: F401  (first: pins the CPU math before torch loads, as in evaluate)

# isort: split

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
ORT, OV = "onnxruntime", "openvino"

CHILD = """
import sys, json
sys.path.insert(0, sys.argv[1])  # this checkout's code
import tasks
import argparse
from slimline.evaluation.measure import FLOOR, time_rounds
from slimline.runtime import registry
mode, files, shape = sys.argv[2], json.loads(sys.argv[3]), tuple(json.loads(sys.argv[4]))
cfg = argparse.Namespace(**json.loads(sys.argv[5]))
ov = {}
if mode != "without":  # OpenVINO loaded and run first, and kept alive while ORT is timed
    ov = {"ov:" + f: registry.load("openvino", f, shape, cfg.threads).caller(1) for f in files}
    for call in ov.values():
        for _ in range(cfg.warmup + cfg.repeats):
            call()
callers = {FLOOR: registry.floor("onnxruntime", shape, cfg.threads).caller(1)}
callers |= {f: registry.load("onnxruntime", f, shape, cfg.threads).caller(1) for f in files}
rounds = time_rounds(callers | (ov if mode == "interleaved" else {}), cfg)
print(json.dumps({"p50": {n: rounds[n]["p50"] for n in callers}, "openvino": "openvino" in sys.modules}))
"""
# without: never imports openvino; loaded: OpenVINO loaded and run, then idle while ORT is
# timed; interleaved: and timed in the same rounds as ORT, as evaluate times them
MODES = ("without", "loaded", "interleaved")


def prepared(folder: Path) -> Path | None:
    """The data/prepared that goes with an ONNX folder: models/onnx's, or a --keep copy's."""
    return next((d for d in (folder.parent / "data/prepared", folder.parent.parent / "data/prepared")
                 if (d / "meta.json").is_file()), None)


def onnx_shape(path: Path) -> tuple:
    import onnx

    dims = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim[1:]
    return tuple(d.dim_value for d in dims)


def side_by_side(folder: Path, cfg) -> None:
    from slimline.compress.onnx_files import OnnxFileError
    from slimline.data.dataset import load_prepared
    from slimline.evaluation.measure import FLOOR, time_rounds
    from slimline.evaluation.selection import beats, candidate, ratio_range
    from slimline.runtime import registry

    files = [e["file"] for e in json.loads((folder / "manifest.json").read_text())["variants"]]
    data = prepared(folder)
    prep = load_prepared(data) if data else None
    shape = prep.input_shape if prep else onnx_shape(folder / files[0])
    runners, skipped = {}, {}
    for r in (ORT, OV):  # in evaluate's order (measure.load_runners), the floors first in the rounds
        for f in files:
            try:
                runners[candidate(f, r)] = registry.load(r, folder / f, shape, cfg.threads)
            except (OnnxFileError, ValueError) as err:  # a runtime that cannot load a file: its message
                skipped[candidate(f, r)] = str(err)
    floors = {candidate(FLOOR, r): registry.floor(r, shape, cfg.threads) for r in (ORT, OV)}
    rounds = time_rounds({n: x.caller(1) for n, x in (floors | runners).items()}, cfg)  # latency first
    rec = {n: {"p50_ms_b1": statistics.median(t["p50"]), "p50_ms_b1_rounds": t["p50"]}
           for n, t in rounds.items()}
    acc = (f"accuracy on the {len(prep.splits['test'][1])} test images of {data}" if prep
           else "no data/prepared found: no accuracy")
    print(f"\n{folder}: {len(files)} files, input {shape}, {cfg.rounds} rounds of {cfg.repeats} calls, "
          f"{cfg.threads} thread(s); {acc}")
    w = max(map(len, files)) + 2
    print(f"{'file':<{w}}{'ORT us':>8}{'OV us':>8}{'ORT/OV':>8}{'range':>14}  {'faster':<12}"
          f"{'ORT acc':>8}{'OV acc':>8}{'agree':>8}")
    won = {ORT: 0, OV: 0, "tie": 0}
    for f in [FLOOR, *files]:
        a, b = candidate(f, ORT), candidate(f, OV)
        if a not in rec or b not in rec:
            print(f"{f:<{w}}skipped: {skipped.get(a) or skipped.get(b)}")
            continue
        r, lo, hi = ratio_range(rec[a], rec[b])
        faster = ORT if beats(rec[a], rec[b], cfg.latency_margin) else (
            OV if beats(rec[b], rec[a], cfg.latency_margin) else "tie")
        won[faster] += f != FLOOR
        acc = ""
        if prep and f != FLOOR:
            x, y = prep.splits["test"]
            top = [runners[n].predict(x.astype(np.float32)).argmax(1) for n in (a, b)]
            acc = f"{np.mean(top[0] == y):>8.4f}{np.mean(top[1] == y):>8.4f}{np.mean(top[0] == top[1]):>8.4f}"
        print(f"{f:<{w}}{rec[a]['p50_ms_b1'] * 1e3:>8.1f}{rec[b]['p50_ms_b1'] * 1e3:>8.1f}{r:>8.2f}"
              f"{f'[{lo:.2f}, {hi:.2f}]':>14}  {faster:<12}{acc}")
    print(f"faster by evaluate's rule ({cfg.latency_margin:.0%} in 4 of 5 rounds): onnxruntime on {won[ORT]} "
          f"files, openvino on {won[OV]}, tie on {won['tie']}")


def isolation(folder: Path, cfg, sets: int) -> None:
    from slimline.data.dataset import load_prepared
    from slimline.evaluation.measure import FLOOR

    files = [str(folder / e["file"]) for e in json.loads((folder / "manifest.json").read_text())["variants"]]
    data = prepared(folder)
    shape = load_prepared(data).input_shape if data else onnx_shape(Path(files[0]))
    args = [json.dumps(files), json.dumps(list(shape)),
            json.dumps({k: getattr(cfg, k) for k in ("threads", "warmup", "repeats", "rounds")})]
    got = {m: [] for m in MODES}
    for i in range(sets):  # each set in the other order than the last: a slow spell lands on all alike
        for mode in MODES[::1 if i % 2 == 0 else -1]:
            out = subprocess.run([sys.executable, "-c", CHILD, str(ROOT), mode, *args],
                                 capture_output=True, text=True, check=True)
            child = json.loads(out.stdout.strip().splitlines()[-1])
            if child["openvino"] != (mode != "without"):
                raise SystemExit(f"the {mode!r} child had openvino imported: {child['openvino']}")
            got[mode].append({n: statistics.median(p) for n, p in child["p50"].items()})
    print(f"\nisolation: ORT p50 in a process that never imports openvino (without), one where OpenVINO ran "
          f"every file first and stays loaded (loaded), and one that also times OpenVINO in the same rounds "
          f"(interleaved, as evaluate); {sets} set(s) of fresh processes. Slow spells only add time, so each "
          f"is its best set, and the ratios are of those (in brackets: the range of the per-set ratios)")
    w = max(len(Path(f).name) for f in files) + 2
    print(f"{'file':<{w}}{'without us':>11}{'loaded':>8}{'interleaved':>12}{'loaded/without':>26}"
          f"{'interleaved/without':>26}")
    worst = {m: 0.0 for m in MODES[1:]}
    for f in [FLOOR, *files]:
        best = {m: min(x[f] for x in got[m]) for m in MODES}
        line = f"{Path(f).name:<{w}}{best['without'] * 1e3:>11.1f}{best['loaded'] * 1e3:>8.1f}"
        line += f"{best['interleaved'] * 1e3:>12.1f}"
        for m in MODES[1:]:
            per = [b[f] / a[f] for a, b in zip(got["without"], got[m], strict=True)]
            worst[m] = max(worst[m], abs(best[m] / best["without"] - 1))
            line += f"{best[m] / best['without']:>12.2f} [{min(per):.2f}, {max(per):.2f}]"
        print(line)
    print("largest move of a ratio: " + "; ".join(
        f"{m} {x:.0%} (within evaluate's latency_margin {cfg.latency_margin:.0%}: "
        f"{'yes' if x <= cfg.latency_margin else 'no'})" for m, x in worst.items())
          + f"; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--onnx", type=Path, default=Path("models/onnx"))
    ap.add_argument("--frontier", type=Path, nargs="*", default=[],
                    help="more ONNX folders (with manifest.json), e.g. frontier_resnet --keep DIR's DIR/onnx")
    ap.add_argument("--rounds", type=int, help="timing rounds (default: params.yaml's evaluate.rounds)")
    ap.add_argument("--sets", type=int, default=3, help="isolation check: sets of child processes (0: none)")
    args = ap.parse_args()
    import onnxruntime
    import torch

    from slimline.params import load_params
    from slimline.runtime import openvino

    cfg = load_params("params.yaml").evaluate
    if args.rounds:
        cfg = cfg.model_copy(update={"rounds": args.rounds})
    torch.set_num_threads(cfg.threads)
    print(f"onnxruntime {onnxruntime.__version__}, openvino {openvino.version()} "
          f"({openvino.config(cfg.threads)}, static batch); load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} cores (another busy process makes every number noisier)")
    for folder in [args.onnx, *args.frontier]:
        side_by_side(folder, cfg)
    if args.sets:
        isolation(args.onnx, cfg, args.sets)


if __name__ == "__main__":
    main()
