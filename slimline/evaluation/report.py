"""evaluate's headline numbers (evaluate_summary.json) and its markdown report."""
from __future__ import annotations

from slimline.params import EvaluateParams
from slimline.stage import markdown_table

COLUMNS = ["name", "val_accuracy", "accuracy", "bytes", "gzip_bytes", "params", "nonzero_params", "flops",
           "ort_p50_ms_b1", "ort_p95_ms_b1", "ort_throughput_b256", "torch_p50_ms_b1", "within_budget"]


def summary(base: dict, chosen: dict | None) -> dict:
    """The chosen variant against the baseline: the ratios a reader wants first."""
    out = {"selected": chosen["name"] if chosen else None}
    if chosen:
        out.update(size_ratio=base["bytes"] / chosen["bytes"],
                   latency_ratio=base["ort_p50_ms_b1"] / chosen["ort_p50_ms_b1"],
                   accuracy_drop_pt=(base["accuracy"] - chosen["accuracy"]) * 100,
                   val_accuracy_drop_pt=(base["val_accuracy"] - chosen["val_accuracy"]) * 100,
                   accuracy=chosen["accuracy"], bytes=chosen["bytes"], ort_p50_ms_b1=chosen["ort_p50_ms_b1"])
    return out


def markdown(cfg: EvaluateParams, variants: list[dict], summ: dict, hw: dict, why: str) -> str:
    rows = [{c: v[c] for c in COLUMNS} | {"ci95": f"{v['accuracy_ci95'][0]:.3f}-{v['accuracy_ci95'][1]:.3f}"}
            for v in variants]
    head = (f"**Selected: `{summ['selected']}`**: {summ['size_ratio']:.1f}x smaller and "
            f"{summ['latency_ratio']:.2f}x lower ORT batch-1 p50 latency than the fp32 baseline; "
            f"accuracy change against it {-summ['accuracy_drop_pt']:+.2f} pt on test, "
            f"{-summ['val_accuracy_drop_pt']:+.2f} pt on val.") if summ["selected"] else \
        f"**No variant selected.** {why}"
    return (f"## evaluate\n\n{head}\n\nObjective `{cfg.objective}`, budgets: val accuracy drop <= "
            f"{cfg.max_accuracy_drop * 100:.2f} pt, max_bytes {cfg.max_bytes}, max_p50_ms {cfg.max_p50_ms}. "
            f"Selection uses val accuracy; `accuracy` is test (with 95% CI). Latencies: ONNX Runtime, "
            f"{cfg.threads} thread(s), {hw['cpu']}; comparable only on the same hardware.\n\n"
            f"{markdown_table(rows)}\n\nPareto plots: `reports/pareto_latency.png`, `reports/pareto_bytes.png`.\n")
