"""The structure search's leaderboard: ranking, budgets, Pareto fronts, the
recommended structure, and its markdown.

Pure functions on candidate records, so the rules are tested on fixed inputs.
A record is a dict with: name, structure, choice, status ("ok" or "failed"),
reason, val_accuracy, test_accuracy, params, flops, ort_p50_ms_b1,
train_seconds, source ("ran", "reused"). Ranking uses validation accuracy;
test accuracy is only reported.
"""
from __future__ import annotations

from slimline.params import SearchParams
from slimline.search.space import describe
from slimline.evaluation.selection import pareto_front


def objective_value(r: dict, cfg: SearchParams) -> float | None:
    if cfg.objective == "accuracy":
        return r["val_accuracy"]
    if r.get("ort_p50_ms_b1") is None:
        return None
    return r["val_accuracy"] - cfg.latency_weight * r["ort_p50_ms_b1"]


def budget_failures(r: dict, cfg: SearchParams) -> list[str]:
    why = []
    if cfg.max_params is not None and r["params"] > cfg.max_params:
        why.append(f"{r['params']:,} params > max_params {cfg.max_params:,}")
    if cfg.max_flops is not None and r["flops"] > cfg.max_flops:
        why.append(f"{r['flops']:,} FLOPs > max_flops {cfg.max_flops:,}")
    if objective_value(r, cfg) is None:
        why.append("no latency measured, which the score needs")
    return why


def leaderboard(records: list[dict], cfg: SearchParams, current: dict | None = None) -> dict:
    """{"rows", "recommended", "runner_up", "fronts", "current"}.

    rows: finished candidates best first (objective, then fewer FLOPs, params,
    name: deterministic), then failed ones. Each row gains `objective`,
    `front_flops` / `front_latency` (on the Pareto front of val accuracy against
    FLOPs / ORT p50), `budget` (why it misses a budget) and `current` (it is the
    structure params.yaml holds now).
    """
    ok = [dict(r) for r in records if r["status"] == "ok"]
    failed = [dict(r) for r in records if r["status"] != "ok"]
    front_flops = pareto_front(ok, cost="flops", gain="val_accuracy")
    timed = [r for r in ok if r.get("ort_p50_ms_b1") is not None]
    front_latency = pareto_front(timed, cost="ort_p50_ms_b1", gain="val_accuracy")
    for r in ok + failed:
        r["objective"] = objective_value(r, cfg) if r["status"] == "ok" else None
        r["front_flops"] = r["name"] in front_flops
        r["front_latency"] = r["name"] in front_latency
        r["budget"] = budget_failures(r, cfg) if r["status"] == "ok" else []
        r["current"] = current is not None and r["structure"] == current

    def rank(r):
        value = r["objective"]
        # Exact ties: the cheaper structure, then the one params.yaml already holds.
        return (value is None, -(value or 0.0), r["flops"], r["params"], not r["current"], r["name"])

    ok.sort(key=rank)
    failed.sort(key=lambda r: r["name"])
    eligible = [r for r in ok if not r["budget"]]
    best = eligible[0] if eligible else None
    runner_up = eligible[1] if len(eligible) > 1 else None
    return {"rows": ok + failed, "recommended": best["name"] if best else None,
            "runner_up": runner_up["name"] if runner_up else None,
            "fronts": {"flops": sorted(front_flops), "latency": sorted(front_latency)},
            "current": next((r["name"] for r in ok if r["current"]), None)}


def choice_summary(rows: list[dict]) -> list[dict]:
    """Per searched key and value: how many finished, and their best and mean val accuracy.
    Shows which activation or layer count won, and by how much."""
    out = []
    ok = [r for r in rows if r["status"] == "ok"]
    keys = sorted({k for r in ok for k in r["choice"]})
    for key in keys:
        values = []
        for r in ok:
            if r["choice"].get(key) not in values:
                values.append(r["choice"].get(key))
        for value in values:
            accs = [r["val_accuracy"] for r in ok if r["choice"].get(key) == value]
            out.append({"key": key, "value": value, "candidates": len(accs),
                        "best_val_accuracy": max(accs), "mean_val_accuracy": sum(accs) / len(accs)})
    return out


def _pct(v) -> str:
    return "—" if v is None else f"{v * 100:.2f}%"


def table_rows(board: dict) -> list[dict]:
    """Flat rows for a Prefect table artifact (and the markdown)."""
    out = []
    for i, r in enumerate(board["rows"], 1):
        marks = [m for m, on in (("recommended", r["name"] == board["recommended"]),
                                 ("front: FLOPs", r["front_flops"]),
                                 ("front: latency", r["front_latency"]),
                                 ("current params.yaml", r["current"])) if on]
        note = ", ".join(marks + r["budget"])
        if r["status"] != "ok":
            note = f"failed: {r.get('reason') or 'unknown'}"
        p50 = r.get("ort_p50_ms_b1")
        out.append({"rank": i if r["status"] == "ok" else None, "candidate": r["name"],
                    "structure": describe(r["structure"]), "val_acc": _pct(r.get("val_accuracy")),
                    "test_acc": _pct(r.get("test_accuracy")),
                    "params": None if r.get("params") is None else f"{r['params']:,}",
                    "mflops": None if r.get("flops") is None else round(r["flops"] / 1e6, 3),
                    "ort_p50_us": None if p50 is None else round(p50 * 1e3, 1),
                    "train_s": None if r.get("train_seconds") is None else round(r["train_seconds"], 1),
                    "source": r.get("source"), "note": note})
    return out


def headline(board: dict, cfg: SearchParams) -> str:
    rows = {r["name"]: r for r in board["rows"]}
    best = rows.get(board["recommended"])
    failed = sum(r["status"] != "ok" for r in board["rows"])
    if best is None:
        return (f"No candidate is recommended: none of the {len(rows) - failed} finished "
                f"candidates meets the budgets ({failed} failed).")
    text = (f"Recommended: **{best['name']}** ({describe(best['structure'])}): val "
            f"{_pct(best['val_accuracy'])}, test {_pct(best['test_accuracy'])}, "
            f"{best['params']:,} params, {best['flops'] / 1e6:.2f} MFLOPs")
    second = rows.get(board["runner_up"])
    if second is not None:
        gap = (best["objective"] - second["objective"]) * (100 if cfg.objective == "accuracy" else 1)
        unit = " pt val accuracy" if cfg.objective == "accuracy" else " on the score"
        text += (f"; tied with the runner-up {second['name']}, and cheaper or already in params.yaml"
                 if gap == 0 else f"; {gap:+.2f}{unit} over the runner-up {second['name']}")
    current = rows.get(board["current"])
    if current is not None and current is not best:
        text += (f"; {(best['val_accuracy'] - current['val_accuracy']) * 100:+.2f} pt val over "
                 f"the structure params.yaml holds now")
    return text + f". {failed} candidate(s) failed."


def markdown(board: dict, cfg: SearchParams, title: str = "Structure search") -> str:
    def cell(v):
        return "—" if v is None else str(v)

    rows = table_rows(board)
    cols = ["rank", "candidate", "structure", "val_acc", "test_acc", "params", "mflops",
            "ort_p50_us", "train_s", "note"]
    lines = [f"## {title}", "", headline(board, cfg), "",
             f"Target `{cfg.target}`, objective `{cfg.objective}`"
             + (f" (latency_weight {cfg.latency_weight:g} per ms)" if cfg.objective == "score" else "")
             + (f", max_params {cfg.max_params:,}" if cfg.max_params else "")
             + (f", max_flops {cfg.max_flops:,}" if cfg.max_flops else "")
             + ". Ranked on validation accuracy; test accuracy is reported only. Latency: ONNX "
               "Runtime, fp32, batch 1, 1 thread, p50, measured by the training stage (compare "
               "only rows from the same machine and load).", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r[c]) for c in cols) + " |" for r in rows]
    summary = choice_summary(board["rows"])
    if summary:
        lines += ["", "### By choice", "", "| key | value | candidates | best val | mean val |",
                  "|---|---|---|---|---|"]
        lines += [f"| {s['key']} | {s['value']} | {s['candidates']} | {_pct(s['best_val_accuracy'])} "
                  f"| {_pct(s['mean_val_accuracy'])} |" for s in summary]
    return "\n".join(lines) + "\n"
