"""Stage `evaluate`: measure every variant the same way and choose the one to ship.

    python -m tasks.evaluate --data data/prepared --onnx models/onnx --ship models/ship
                             [--params params.yaml]

Writes reports/evaluate.json ({"baseline", "selected", "variants", "hardware"}),
evaluate_summary.json, evaluate.md, two Pareto PNGs, and the ship bundle for the
selected variant in models/ship/ (slimline/evaluation/ holds the how).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from slimline.data.dataset import load_prepared
from slimline.errors import StageError
from slimline.evaluation.measure import hardware, measure
from slimline.evaluation.plots import pareto_plot
from slimline.evaluation.report import markdown, summary
from slimline.evaluation.selection import pareto_front, select
from slimline.evaluation.ship import write_ship
from slimline.io import write_json
from slimline.params import Params
from slimline.stage import main, write_report

BASELINE = "baseline"

SECTIONS = ("evaluate",)  # the params it reads: dvc.yaml's `params` for this stage


def evaluate(params: Params, args: argparse.Namespace) -> None:
    cfg = params.evaluate
    manifest_path = args.onnx / "manifest.json"
    if not manifest_path.exists():
        raise StageError(f"{manifest_path} is missing: run the `quantize` stage first")
    quant_manifest = json.loads(manifest_path.read_text())
    torch.set_num_threads(cfg.threads)
    prep = load_prepared(args.data)
    variants = measure(quant_manifest["variants"], args.onnx, prep, cfg)
    selected, failures = select(variants, BASELINE, cfg)
    for cost in ("ort_p50_ms_b1", "bytes"):
        front = pareto_front(variants, cost)
        for v in variants:
            v[f"pareto_{'latency' if cost.startswith('ort') else 'bytes'}"] = v["name"] in front
    for v in variants:
        v["within_budget"] = not failures[v["name"]]
        v["budget_misses"] = failures[v["name"]]
    hw = hardware(cfg.threads)
    by = {v["name"]: v for v in variants}
    base, chosen = by[BASELINE], by.get(selected)
    why = "" if chosen else "no variant meets every budget: " + "; ".join(
        f"{n}: {', '.join(f)}" for n, f in failures.items() if f)
    if chosen is None and cfg.require_selection:  # before writing: keep the last good bundle
        raise StageError(f"evaluate.require_selection is true and {why}")
    report = {"baseline": BASELINE, "selected": selected, "variants": variants, "hardware": hw}
    summ = summary(base, chosen)
    reports = Path("reports")
    pareto_plot(variants, "ort_p50_ms_b1", "ORT batch-1 p50 latency (ms)", reports / "pareto_latency.png", selected)
    pareto_plot(variants, "bytes", "ONNX file size (bytes)", reports / "pareto_bytes.png", selected)
    write_ship(args.ship, chosen, args.onnx, quant_manifest, prep, hw, why)
    write_json(reports / "evaluate_summary.json", summ)
    md = markdown(cfg, variants, summ, hw, why)
    write_report("evaluate", report, md)
    print(f"evaluate: selected {selected}" + (f" ({summ['size_ratio']:.1f}x smaller, "
                                             f"{summ['latency_ratio']:.2f}x faster)" if chosen else ""), flush=True)


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--onnx", required=True, type=Path)
    p.add_argument("--ship", required=True, type=Path)


if __name__ == "__main__":
    main("evaluate", evaluate, _args, SECTIONS)
