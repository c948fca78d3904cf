"""Choosing the model to ship: budgets, objective, Pareto fronts, confidence intervals.

Pure functions on the variant records of reports/evaluate.json, so the rules
are tested on fixed inputs. Selection uses *validation* accuracy; test
accuracy is only reported (choosing on the test set would inflate it).
"""
from __future__ import annotations

import math

from slimline.params import EvaluateParams


def wilson_ci(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for an accuracy (sane near 100%, unlike p +/- 1.96 SE)."""
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def pareto_front(variants: list[dict], cost: str, gain: str = "accuracy") -> set[str]:
    """Names of variants no other variant beats on both: >= gain and <= cost, one strictly."""
    front = set()
    for v in variants:
        dominated = any(
            o is not v and o[gain] >= v[gain] and o[cost] <= v[cost] and (o[gain] > v[gain] or o[cost] < v[cost])
            for o in variants)
        if not dominated:
            front.add(v["name"])
    return front


def budget_failures(v: dict, base: dict, cfg: EvaluateParams) -> list[str]:
    """Why variant v misses a budget (empty: it qualifies)."""
    why = []
    drop = base["val_accuracy"] - v["val_accuracy"]
    if drop > cfg.max_accuracy_drop + 1e-12:
        why.append(f"val accuracy {drop * 100:.2f} pt below the baseline (budget "
                   f"{cfg.max_accuracy_drop * 100:.2f} pt)")
    if cfg.max_bytes is not None and v["bytes"] > cfg.max_bytes:
        why.append(f"{v['bytes']:,} bytes > max_bytes {cfg.max_bytes:,}")
    if cfg.max_p50_ms is not None and v["ort_p50_ms_b1"] > cfg.max_p50_ms:
        why.append(f"p50 {v['ort_p50_ms_b1']:.4f} ms > max_p50_ms {cfg.max_p50_ms}")
    return why


def select(variants: list[dict], baseline: str, cfg: EvaluateParams) -> tuple[str | None, dict[str, list[str]]]:
    """(selected name or None, {name: reasons it does not qualify}).

    Among the variants within every budget, the best on the objective; ties
    break on the other measure, then on name, so the choice is deterministic.
    """
    by_name = {v["name"]: v for v in variants}
    if baseline not in by_name:
        raise ValueError(f"baseline variant {baseline!r} is not among the evaluated variants")
    base = by_name[baseline]
    failures = {v["name"]: budget_failures(v, base, cfg) for v in variants}
    eligible = [v for v in variants if not failures[v["name"]]]
    if not eligible:
        return None, failures
    if cfg.objective == "latency":
        key = lambda v: (v["ort_p50_ms_b1"], v["bytes"], v["name"])  # noqa: E731
    else:
        key = lambda v: (v["bytes"], v["ort_p50_ms_b1"], v["name"])  # noqa: E731
    return min(eligible, key=key)["name"], failures
