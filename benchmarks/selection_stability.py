"""Does the shipped choice survive timing noise? evaluate's measurement and selection, repeated.

    python -m benchmarks.selection_stability [--root .] [--runs 6] [--objective latency]

Needs a built pipeline (models/onnx from `dvc repro quantize`). Runs evaluate's
measure-and-select `--runs` times on the same files, in fresh processes one after the
other (as fresh clones would), and prints each run's choice, why, and its tied set,
then how many runs agree with the most common choice. The old rule (lowest p50 wins,
best of two rounds) is applied to the same timings for comparison: its first round
pair stands in for the two rounds it had.
"""
from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = """
import json, sys
sys.path.insert(0, sys.argv[2])  # this checkout's code, not the --root copy's
from pathlib import Path
import torch
from slimline.data.dataset import load_prepared
from slimline.evaluation.measure import measure
from slimline.evaluation.selection import select
from slimline.params import load_params

params = load_params("params.yaml")
cfg = params.evaluate.model_copy(update={"objective": sys.argv[1]})
torch.set_num_threads(cfg.threads)
manifest = json.loads(Path("models/onnx/manifest.json").read_text())
variants, _ = measure(manifest["variants"], Path("models/onnx"), load_prepared(Path("data/prepared")), cfg)
sel = select(variants, "baseline", cfg)
ok = [v for v in variants if not sel.failures[v["name"]]]
old = min(ok, key=lambda v: (min(v["ort_p50_ms_b1_rounds"][:2]), v["bytes"], v["name"]))["name"]
print(json.dumps({"name": sel.name, "why": sel.why, "tied": sel.tied, "old_rule": old}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, default=Path("."))
    ap.add_argument("--runs", type=int, default=6)
    ap.add_argument("--objective", choices=["latency", "size"], default="latency")
    args = ap.parse_args()
    picks, old = [], []
    for i in range(args.runs):
        out = subprocess.run([sys.executable, "-c", CHILD, args.objective, str(ROOT)], cwd=args.root,
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        picks.append(r["name"])
        old.append(r["old_rule"])
        print(f"run {i + 1}: {r['name']} ({r['why']}); tied: {', '.join(r['tied'])}; "
              f"old rule: {r['old_rule']}")
    for label, got in (("new rule", picks), ("old rule", old)):
        name, n = collections.Counter(got).most_common(1)[0]
        print(f"{label}: {n} of {len(got)} runs chose {name}; choices {dict(collections.Counter(got))}")


if __name__ == "__main__":
    main()
