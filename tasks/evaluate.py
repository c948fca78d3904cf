"""Stage `evaluate`: measure every variant on every runtime the same way and choose the
(variant, runtime) pair to ship.

    python -m tasks.evaluate --data data/prepared --onnx models/onnx --ship models/ship
                             [--qat models/qat] [--params params.yaml]

The variants: every file in models/onnx/manifest.json (quantize's) and, for each model
in qat.models and qat.pruned, models/qat/<model>/manifest.json (QAT's `<model>.int8_qat`;
none while qat.enabled is false).

Writes reports/evaluate.json ({"baseline", "selected", "variants": one record per
pair, named `variant@runtime`, "runtimes", "skipped", "hardware", "selection",
"lineage"}), evaluate_summary.json, evaluate.md, two Pareto PNGs, and the ship bundle
for the selected pair in models/ship/, with its MODEL_CARD.md (slimline/evaluation/
holds the how).

A pair is eligible when it is within every evaluate budget (against the baseline on the
reference runtime, evaluate.runtimes' first) and passes the quantize gate: top-1
agreement with its own fp32 source on the same runtime, on test, of at least
quantize.min_agreement, and val accuracy at most quantize.max_accuracy_drop below it.
Each record says which it misses (`budget_misses`, each reason naming its param;
`quantize_gate_passed`), and no pair that misses one is selected.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from slimline.data.dataset import load_prepared
from slimline.errors import StageError
from slimline.evaluation import incumbent
from slimline.evaluation.card import lineage, render
from slimline.evaluation.manifests import read_variants
from slimline.evaluation.measure import hardware, measure, runtime_records
from slimline.evaluation.plots import pareto_plot
from slimline.evaluation.report import markdown, summary
from slimline.evaluation.selection import annotate, candidate, select, wins_needed
from slimline.evaluation.ship import git_commit, write_ship
from slimline.io import write_json
from slimline.params import Params
from slimline.report import write_report
from slimline.stage import main

BASELINE = "baseline"

# The params it reads (dvc.yaml's `params` for this stage): its own, and those of every
# stage before it, which the model card cites as the params that made the shipped model.
SECTIONS = ("evaluate", "data", "baseline", "train", "student", "distill", "prune", "quantize", "qat")


def evaluate(params: Params, args: argparse.Namespace) -> None:
    cfg = params.evaluate
    entries, calibration = read_variants(args.onnx, args.qat, params.qat)
    torch.set_num_threads(cfg.threads)
    prep = load_prepared(args.data)
    variants, floors, skipped = measure(entries, prep, cfg)
    baseline = candidate(BASELINE, cfg.runtimes[0])  # the reference: budgets and ratios are against it
    if not any(v["name"] == baseline for v in variants):
        raise StageError(f"the baseline could not run on {cfg.runtimes[0]}, the reference runtime "
                         f"(evaluate.runtimes' first): {next(s['reason'] for s in skipped)}")
    # The quantize gate: a compressed form must match its own fp32 source (quantize.min_agreement,
    # quantize.max_accuracy_drop), measured here; quantize writes every variant and judges none.
    sel = select(variants, baseline, cfg, gate=params.quantize, incumbent=incumbent.read(args.incumbent))
    base = annotate(variants, baseline, sel, params.quantize)
    hw, runtimes = hardware(cfg.threads), runtime_records(cfg, floors)
    chosen = next((v for v in variants if v["name"] == sel.name), None)
    why = "" if chosen else "no variant meets every budget: " + "; ".join(
        f"{n}: {', '.join(f)}" for n, f in sel.failures.items() if f)
    if chosen is None and cfg.require_selection:  # before writing: keep the last good bundle
        raise StageError(f"evaluate.require_selection is true and {why}")
    summ = summary(base, chosen, sel)
    report = {"baseline": baseline, "selected": sel.name, "variants": variants, "runtimes": runtimes,
              "skipped": skipped, "hardware": hw,
              "selection": summ | {"objective": cfg.objective, "latency_margin": cfg.latency_margin,
                                   "rounds": cfg.rounds, "wins_needed": wins_needed(cfg.rounds)}}
    if chosen:
        entry = next(e for e in entries if e["name"] == chosen["variant"])
        # models/: the folders this stage's dvc.yaml deps name (models/baseline, models/student, ...)
        report["lineage"] = lineage(chosen, entry, params, args.data, Path("models"), prep.meta,
                                    git_commit(), calibration)
    reports = Path("reports")
    pareto_plot(variants, "p50_ms_b1", "batch-1 p50 latency (ms), each on its runtime",
                reports / "pareto_latency.png", sel.name)
    pareto_plot(variants, "bytes", "ONNX file size (bytes)", reports / "pareto_bytes.png", sel.name)
    write_ship(args.ship, chosen, entries, calibration, prep, hw, why, card=render(report),
               runtime=runtimes[chosen["runtime"]] if chosen else None)
    write_json(reports / "evaluate_summary.json", summ)
    md = markdown(cfg, report, why, params.quantize)
    write_report("evaluate", report, md)
    print(f"evaluate: selected {sel.name}" + (f" ({summ['size_ratio']:.1f}x smaller, "
                                              f"{summ['latency_ratio']:.2f}x faster; {sel.why})"
                                              if chosen else ""), flush=True)


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--onnx", required=True, type=Path)
    p.add_argument("--qat", type=Path, default=Path("models/qat"), help="the QAT stages' folders")
    p.add_argument("--ship", required=True, type=Path)
    p.add_argument("--incumbent", type=Path, default=incumbent.PATH,
                   help="the variant last shipped and accepted (slimline/evaluation/incumbent.py)")


if __name__ == "__main__":
    main("evaluate", evaluate, _args, SECTIONS)
