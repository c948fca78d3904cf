"""Stage `evaluate`: measure every variant the same way and choose the one to ship.

    python -m tasks.evaluate [--params params.yaml] [--data data/prepared]
                             [--onnx models/onnx] [--ship models/ship]

Every ONNX model from the quantize stage gets the same ONNX Runtime options,
thread count and warm-up. Latency is measured in two rounds in opposite
orders (the best p50 of the two counts), since this machine is shared and a
burst of noise should not decide the winner. Writes reports/evaluate.json
({"baseline", "selected", "variants"}), evaluate.md, two Pareto PNGs, and
the ship bundle for the selected variant in models/ship/.
"""
from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import platform
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

from slimline.compress import onnx_tools as ox
from slimline.data.dataset import load_prepared
from slimline.errors import StageError
from slimline.io import atomic_dir, atomic_write_bytes, write_json
from slimline.model import count_flops, count_params, load_model
from slimline.params import Params
from slimline.compress.pruning import sparsity
from slimline.evaluation.selection import pareto_front, select, wilson_ci
from slimline.numerics import cpu_info
from slimline.stage import main, markdown_table, write_report

BASELINE = "baseline"


def hardware(threads: int) -> dict:
    import onnxruntime

    return {"cpu": cpu_info()["model"], "cores": os.cpu_count(), "threads": threads, "onnxruntime": onnxruntime.__version__,
            "torch": torch.__version__, "python": platform.python_version(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def torch_latency_ms(model, shape, warmup: int, repeats: int) -> float:
    x = torch.rand(1, *shape) * 255
    with torch.inference_mode():
        for _ in range(warmup):
            model(x)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t)
    return float(np.median(times) * 1e3)


def git_commit() -> str | None:
    """HEAD, with "-dirty" when tracked files differ from it (the usual case mid-run,
    since DVC updates dvc.lock only after the stage)."""
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=40"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def measure(entries, onnx_dir: Path, prep, cfg) -> list[dict]:
    (x_val, y_val), (x_test, y_test) = prep.splits["val"], prep.splits["test"]
    x_val, x_test = x_val.astype(np.float32), x_test.astype(np.float32)
    shape = prep.input_shape
    sessions = {e["name"]: ox.session(onnx_dir / e["file"], threads=cfg.threads) for e in entries}
    p50 = {e["name"]: [] for e in entries}
    p95 = {e["name"]: [] for e in entries}
    for order in (entries, entries[::-1]):  # two rounds, opposite orders
        for e in order:
            lat = ox.latency_ms(sessions[e["name"]], shape, batch=1, warmup=cfg.warmup, repeats=cfg.repeats)
            p50[e["name"]].append(lat["p50"])
            p95[e["name"]].append(lat["p95"])
    # Each torch source backs up to four ONNX variants: load and count it once.
    sources = {}
    for d in dict.fromkeys(e["source_dir"] for e in entries):
        model, _ = load_model(d)
        sources[d] = (model, count_params(model), sparsity(model)[0])
    variants = []
    for e in entries:
        name, sess, path = e["name"], sessions[e["name"]], onnx_dir / e["file"]
        val_correct = int((ox.predict(sess, x_val).argmax(1) == y_val).sum())
        test_correct = int((ox.predict(sess, x_test).argmax(1) == y_test).sum())
        model, params, nonzero = sources[e["source_dir"]]
        data = path.read_bytes()
        best = int(np.argmin(p50[name]))
        fp32 = e["quantization"] == "fp32"
        variants.append({
            "name": name, "source": e["source"], "quantization": e["quantization"],
            "accuracy": test_correct / len(y_test), "accuracy_ci95": list(wilson_ci(test_correct, len(y_test))),
            "val_accuracy": val_correct / len(y_val), "params": params, "nonzero_params": nonzero,
            "bytes": len(data), "gzip_bytes": len(gzip.compress(data, mtime=0)),
            "flops": count_flops(model, shape) if fp32 else None,
            "ort_p50_ms_b1": p50[name][best], "ort_p95_ms_b1": p95[name][best],
            "ort_throughput_b256": ox.throughput(sess, shape, batch=256),
            "torch_p50_ms_b1": torch_latency_ms(model, shape, cfg.warmup, cfg.repeats) if fp32 else None,
            "agreement_with_fp32": e["agreement"],
        })
    return variants


def pareto_plot(variants, cost: str, label: str, path: Path, selected: str | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    front = pareto_front(variants, cost)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for v in variants:
        on = v["name"] in front
        ax.scatter(v[cost], v["accuracy"] * 100, c="tab:red" if v["name"] == selected else
                   ("tab:blue" if on else "tab:gray"), s=40 if on else 20, zorder=3)
        ax.annotate(v["name"], (v[cost], v["accuracy"] * 100), fontsize=6, xytext=(3, 2),
                    textcoords="offset points")
    pts = sorted((v[cost], v["accuracy"] * 100) for v in variants if v["name"] in front)
    ax.step([p[0] for p in pts], [p[1] for p in pts], where="post", c="tab:blue", lw=1, zorder=2)
    ax.set_xscale("log")
    ax.set_xlabel(label)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"Accuracy vs {label} (blue: Pareto front, red: selected)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def write_ship(ship: Path, chosen: dict | None, onnx_dir: Path, quant_manifest: dict, prep, hw: dict,
               why: str) -> None:
    with atomic_dir(ship) as tmp:
        if chosen is None:
            write_json(tmp / "manifest.json", {"selected": None, "reason": why})
            return
        entry = next(e for e in quant_manifest["variants"] if e["name"] == chosen["name"])
        (tmp / "model.onnx").write_bytes((onnx_dir / entry["file"]).read_bytes())
        write_json(tmp / "labels.json", [str(i) for i in range(prep.num_classes)])
        write_json(tmp / "manifest.json", {
            "selected": chosen["name"], "source": entry["source"], "opset": entry["opset"],
            "input": {"name": ox.INPUT, "shape": ["batch", *prep.input_shape], "dtype": "float32",
                      "pixels": "raw, 0..255; normalisation is inside the model"},
            "quantization": {"kind": entry["quantization"],  # calibration applies to static int8 only
                             **(quant_manifest.get("calibration", {}) if entry["quantization"] == "static" else {})},
            "metrics": {k: chosen[k] for k in ("accuracy", "accuracy_ci95", "val_accuracy", "bytes",
                                               "ort_p50_ms_b1", "ort_throughput_b256")},
            "hardware": hw, "onnxruntime": hw["onnxruntime"], "git_commit": git_commit()})


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
    summary = {"selected": selected}
    if chosen:
        summary.update(size_ratio=base["bytes"] / chosen["bytes"],
                       latency_ratio=base["ort_p50_ms_b1"] / chosen["ort_p50_ms_b1"],
                       accuracy_drop_pt=(base["accuracy"] - chosen["accuracy"]) * 100,
                       val_accuracy_drop_pt=(base["val_accuracy"] - chosen["val_accuracy"]) * 100,
                       accuracy=chosen["accuracy"], bytes=chosen["bytes"], ort_p50_ms_b1=chosen["ort_p50_ms_b1"])
    reports = Path("reports")
    pareto_plot(variants, "ort_p50_ms_b1", "ORT batch-1 p50 latency (ms)", reports / "pareto_latency.png", selected)
    pareto_plot(variants, "bytes", "ONNX file size (bytes)", reports / "pareto_bytes.png", selected)
    write_ship(args.ship, chosen, args.onnx, quant_manifest, prep, hw, why)
    write_json(reports / "evaluate_summary.json", summary)
    cols = ["name", "val_accuracy", "accuracy", "bytes", "gzip_bytes", "params", "nonzero_params", "flops",
            "ort_p50_ms_b1", "ort_p95_ms_b1", "ort_throughput_b256", "torch_p50_ms_b1", "within_budget"]
    rows = [{c: v[c] for c in cols} | {"ci95": f"{v['accuracy_ci95'][0]:.3f}-{v['accuracy_ci95'][1]:.3f}"}
            for v in variants]
    head = (f"**Selected: `{selected}`**: {summary['size_ratio']:.1f}x smaller and "
            f"{summary['latency_ratio']:.2f}x lower ORT batch-1 p50 latency than the fp32 baseline; "
            f"accuracy change against it {-summary['accuracy_drop_pt']:+.2f} pt on test, "
            f"{-summary['val_accuracy_drop_pt']:+.2f} pt on val.") if chosen else f"**No variant selected.** {why}"
    md = (f"## evaluate\n\n{head}\n\nObjective `{cfg.objective}`, budgets: val accuracy drop <= "
          f"{cfg.max_accuracy_drop * 100:.2f} pt, max_bytes {cfg.max_bytes}, max_p50_ms {cfg.max_p50_ms}. "
          f"Selection uses val accuracy; `accuracy` is test (with 95% CI). Latencies: ONNX Runtime, "
          f"{cfg.threads} thread(s), {hw['cpu']}; comparable only on the same hardware.\n\n"
          f"{markdown_table(rows)}\n\nPareto plots: `reports/pareto_latency.png`, `reports/pareto_bytes.png`.\n")
    write_report("evaluate", report, md)
    print(f"evaluate: selected {selected}" + (f" ({summary['size_ratio']:.1f}x smaller, "
                                             f"{summary['latency_ratio']:.2f}x faster)" if chosen else ""), flush=True)


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="data/prepared", type=Path)
    p.add_argument("--onnx", default="models/onnx", type=Path)
    p.add_argument("--ship", default="models/ship", type=Path)


if __name__ == "__main__":
    main("evaluate", evaluate, _args)
