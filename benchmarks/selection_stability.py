"""Does the shipped choice survive timing noise? evaluate's measurement and selection, repeated.

    python -m benchmarks.selection_stability [--root .] [--runs 6] [--objective latency]
                                             [--incumbent models/incumbent.json | --no-incumbent]

Needs a built pipeline (models/onnx from `dvc repro quantize`). Runs evaluate's
measure-and-select `--runs` times on the same files, in fresh processes one after the
other (as fresh clones would), and prints each run's choice (a `variant@runtime` pair,
over evaluate.runtimes), why, and its tied set, then how many runs agree with the most
common choice. With an incumbent (the committed
models/incumbent.json by default) the choice is evaluate's; the same timings are also
judged without it ("no incumbent") and by the old rule (lowest p50 wins, best of two
rounds; its first round pair stands in for the two rounds it had), for comparison.
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
from slimline.evaluation.manifests import read_variants
from slimline.evaluation.measure import measure
from slimline.evaluation import incumbent
from slimline.evaluation.selection import candidate, select
from slimline.params import load_params

params = load_params("params.yaml")
cfg = params.evaluate.model_copy(update={"objective": sys.argv[1]})
torch.set_num_threads(cfg.threads)
entries, _ = read_variants(Path("models/onnx"), Path("models/qat"), params.qat)
variants, _, _ = measure(entries, load_prepared(Path("data/prepared")), cfg)
held = incumbent.read(Path(sys.argv[3])) if sys.argv[3] else None
base = candidate("baseline", cfg.runtimes[0])  # the budgets are against the reference runtime's
sel = select(variants, base, cfg, gate=params.quantize, incumbent=held)
rule = select(variants, base, cfg, gate=params.quantize)
ok = [v for v in variants if not rule.failures[v["name"]]]
old = min(ok, key=lambda v: (min(v["p50_ms_b1_rounds"][:2]), v["bytes"], v["name"]))["name"]
print(json.dumps({"name": sel.name, "why": sel.why, "tied": sel.tied, "no_incumbent": rule.name,
                  "old_rule": old, "incumbent": held}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, default=Path("."))
    ap.add_argument("--runs", type=int, default=6)
    ap.add_argument("--objective", choices=["latency", "size"], default="latency")
    ap.add_argument("--incumbent", default="models/incumbent.json",
                    help="relative to --root (default: the committed one)")
    ap.add_argument("--no-incumbent", action="store_true", help="select as with no incumbent")
    args = ap.parse_args()
    picks, bare, old = [], [], []
    for i in range(args.runs):
        held = "" if args.no_incumbent else args.incumbent
        out = subprocess.run([sys.executable, "-c", CHILD, args.objective, str(ROOT), held],
                             cwd=args.root, capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        picks.append(r["name"])
        bare.append(r["no_incumbent"])
        old.append(r["old_rule"])
        print(f"run {i + 1} (incumbent {r['incumbent']}): {r['name']} ({r['why']}); "
              f"tied: {', '.join(r['tied'])}; no incumbent: {r['no_incumbent']}; old rule: {r['old_rule']}")
    for label, got in (("evaluate", picks), ("no incumbent", bare), ("old rule", old)):
        name, n = collections.Counter(got).most_common(1)[0]
        print(f"{label}: {n} of {len(got)} runs chose {name}; choices {dict(collections.Counter(got))}")


if __name__ == "__main__":
    main()
