"""The distill stage's report: the KD gain over the scratch student (and, with feature
hints, the hints' share of it), its markdown, and the run record the search reads."""
from __future__ import annotations

from slimline.compress.distill import Distilled
from slimline.compress.features import describe_pairs
from slimline.compress.student import describe
from slimline.params import Params, TrainParams
from slimline.report import markdown_table
from slimline.training.trainer import latency_line


def results(params: Params, cfg: TrainParams, d: Distilled) -> dict:
    """reports/distill.json: the distilled student's accuracy, the scratch one's, the gains."""
    r_kd, r_sc, r_lg = d.kd.results, d.scratch.results, d.logit.results
    out = {
        "test_accuracy": r_kd["test_accuracy"], "val_accuracy": r_kd["val_accuracy"],
        "scratch_test_accuracy": r_sc["test_accuracy"], "scratch_val_accuracy": r_sc["val_accuracy"],
        "kd_gain_test": r_kd["test_accuracy"] - r_sc["test_accuracy"],
        "kd_gain_val": r_kd["val_accuracy"] - r_sc["val_accuracy"],
        "params": r_kd["params"], "flops": r_kd["flops"], "epochs": cfg.epochs,
        "seed": cfg.seed, "temperature": params.distill.temperature, "alpha": params.distill.alpha,
        "structure": r_kd["structure"], "features": [[p.teacher, p.student] for p in d.pairs],
    }
    if d.pairs:
        out.update({"feature_weight": params.distill.feature_weight,
                    "logit_kd_test_accuracy": r_lg["test_accuracy"],
                    "logit_kd_val_accuracy": r_lg["val_accuracy"],
                    "feature_gain_test": r_kd["test_accuracy"] - r_lg["test_accuracy"],
                    "feature_gain_val": r_kd["val_accuracy"] - r_lg["val_accuracy"]})
    return out


def _rows(d: Distilled) -> list[dict]:
    """The accuracy table: distilled, (logit KD only,) scratch."""
    def row(model: str, r: dict) -> dict:
        return {"model": model, "test_acc": r["test_accuracy"], "val_acc": r["val_accuracy"]}

    if d.pairs:
        return [row("distilled (logit + feature KD)", d.kd.results), row("logit KD only", d.logit.results),
                row("scratch", d.scratch.results)]
    return [row("distilled", d.kd.results), row("scratch", d.scratch.results)]


def _how(params: Params, d: Distilled) -> str:
    """How the student was distilled, as the report's sentence says it."""
    how = f"KD (T={params.distill.temperature}, alpha={params.distill.alpha})"
    if d.pairs:
        how += (f" with feature hints (weight {params.distill.feature_weight}: "
                f"{describe_pairs(d.pairs)}), and the same KD without them,")
    elif params.distill.features != "off":
        how += " (distill.features found no pair of feature maps of the same size: logit KD only)"
    return how


def markdown(params: Params, cfg: TrainParams, d: Distilled, res: dict) -> str:
    """reports/distill.md's body, from results() `res`."""
    gain = f"KD gain: **{res['kd_gain_test'] * 100:+.2f} pt** test, {res['kd_gain_val'] * 100:+.2f} pt val"
    if d.pairs:
        gain += (f"; of it, the feature hints' {res['feature_gain_test'] * 100:+.2f} pt test, "
                 f"{res['feature_gain_val'] * 100:+.2f} pt val")
    return (f"## distill\n\nStudent {describe(d.spec, params.student)}, {res['params']:,} params. "
            f"{_how(params, d)} against the same student from scratch, same seed "
            f"({cfg.seed}) and recipe ({cfg.epochs} epochs):\n\n{markdown_table(_rows(d))}\n\n"
            f"{gain} (one seed; `python -m benchmarks.kd_gain` gives the paired mean over seeds).\n\n"
            f"Distilled student: {latency_line(d.kd.run)}\n")


def run_record(d: Distilled) -> dict:
    """reports/distill.run.json's own part: each training's time, and the distilled student's
    device, numerics and ONNX Runtime latency (what a structure search reads)."""
    kd = d.kd.run
    return {"kd_train_seconds": kd["train_seconds"], "scratch_train_seconds": d.scratch.run["train_seconds"],
            **({"logit_kd_train_seconds": d.logit.run["train_seconds"]} if d.pairs else {}),
            "device": kd["device"],
            **{k: v for k, v in kd.items() if k.startswith("numerics")},
            **{k: kd[k] for k in ("ort_p50_ms_b1", "ort_p95_ms_b1", "ort_error") if k in kd}}


def summary_line(d: Distilled, res: dict) -> str:
    """What the stage prints when done."""
    return (f"distill: KD {res['test_accuracy']:.4f} vs scratch {res['scratch_test_accuracy']:.4f} "
            f"({res['kd_gain_test'] * 100:+.2f} pt)"
            + (f", logit KD only {d.logit.results['test_accuracy']:.4f}" if d.pairs else ""))
