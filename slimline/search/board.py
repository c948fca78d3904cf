"""The structure search's leaderboard: ranking, budgets, Pareto fronts, the
recommended structure, and its markdown.

Pure functions on candidate records, so the rules are tested on fixed inputs.
A record is a dict with: name, structure, choice, status ("ok" or "failed"),
reason, val_accuracy, test_accuracy, params, flops, ort_p50_ms_b1,
train_seconds, source ("ran", "reused"), and optionally val_count / val_correct
(the validation images behind val_accuracy, for its 95% interval). Ranking uses
validation accuracy; test accuracy is only reported. Candidates whose intervals
overlap the best one's tie, and the tie goes to the cheaper structure.
"""
from __future__ import annotations

from slimline.evaluation.selection import pareto_front, wilson_ci
from slimline.params import SearchParams
from slimline.search.space import describe


def objective_value(r: dict, cfg: SearchParams) -> float | None:
    if cfg.objective == "accuracy":
        return r["val_accuracy"]
    if r.get("ort_p50_ms_b1") is None:
        return None
    return r["val_accuracy"] - cfg.latency_weight * r["ort_p50_ms_b1"]


def val_interval(r: dict) -> tuple[float, float] | None:
    """95% Wilson interval of the record's val accuracy, or None without a val count.

    Records from before the count was kept (no `val_count`) have no interval: the
    leaderboard treats their accuracy as a point value, so they tie only when equal.
    """
    n, acc = r.get("val_count"), r.get("val_accuracy")
    if not n or acc is None:
        return None
    correct = r.get("val_correct")
    return wilson_ci(round(acc * n) if correct is None else correct, n)


def objective_interval(r: dict, cfg: SearchParams) -> tuple[float, float] | None:
    """The interval of the objective: the val interval, shifted by the latency term for
    `score` (the latency is taken as exact); a point (v, v) without a val count."""
    value = objective_value(r, cfg)
    if value is None:
        return None
    ci = val_interval(r)
    if ci is None:
        return value, value
    shift = value - r["val_accuracy"]  # 0, or -latency_weight x p50
    return ci[0] + shift, ci[1] + shift


def overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] <= b[1] + 1e-12 and b[0] <= a[1] + 1e-12


def budget_failures(r: dict, cfg: SearchParams) -> list[str]:
    why = []
    if cfg.max_params is not None and r["params"] > cfg.max_params:
        why.append(f"{r['params']:,} params > max_params {cfg.max_params:,}")
    if cfg.max_flops is not None and r["flops"] > cfg.max_flops:
        why.append(f"{r['flops']:,} FLOPs > max_flops {cfg.max_flops:,}")
    if objective_value(r, cfg) is None:
        why.append("no latency measured, which the score needs")
    return why


def tie_break(r: dict) -> tuple:
    """Within the tied set: fewer FLOPs, then the structure params.yaml holds, then fewer
    params, then the name."""
    return (r["flops"], not r["current"], r["params"], r["name"])


def tie_reason(winner: dict, other: dict) -> str:
    """The tie-break key that puts `winner` before `other`."""
    if winner["flops"] != other["flops"]:
        return "fewer FLOPs"
    if winner["current"] != other["current"]:
        return "the structure params.yaml already holds"
    if winner["params"] != other["params"]:
        return "fewer params"
    return "same cost: first by name"


def leaderboard(records: list[dict], cfg: SearchParams, current: dict | None = None) -> dict:
    """{"rows", "recommended", "runner_up", "best", "tied", "fronts", "current"}.

    The rule (the same whatever order the records come in):
    1. eligible = the finished candidates within the budgets; B* (`best`) = the best of
       them on the objective (exact ties: tie_break order).
    2. tied set = every eligible candidate whose 95% Wilson interval of val accuracy
       (for `score`: shifted by its latency term) overlaps B*'s, B* included. Pairwise
       overlap is not transitive, so it is decided against B* only, never by sorting
       with a tie-aware comparator.
    3. recommended = the first of the tied set in tie_break order (fewer FLOPs, the
       structure params.yaml holds, fewer params, name).

    rows: the tied set in tie_break order (recommended first), then the other finished
    candidates by objective (exact ties: tie_break), then failed ones by name.
    runner_up: the next eligible candidate in that order. Each row gains `objective`,
    `val_ci95` ([low, high], None without a val count), `objective_ci95`, `tied` (in a
    tied set of two or more), `front_flops` / `front_latency` (on the Pareto front of val
    accuracy against FLOPs / ORT p50), `budget` (why it misses a budget) and `current`
    (it is the structure params.yaml holds now).
    """
    ok = [dict(r) for r in records if r["status"] == "ok"]
    failed = [dict(r) for r in records if r["status"] != "ok"]
    front_flops = pareto_front(ok, cost="flops", gain="val_accuracy")
    timed = [r for r in ok if r.get("ort_p50_ms_b1") is not None]
    front_latency = pareto_front(timed, cost="ort_p50_ms_b1", gain="val_accuracy")
    for r in ok + failed:
        finished = r["status"] == "ok"
        r["objective"] = objective_value(r, cfg) if finished else None
        ci, oci = (val_interval(r), objective_interval(r, cfg)) if finished else (None, None)
        r["val_ci95"] = None if ci is None else list(ci)
        r["objective_ci95"] = None if oci is None else list(oci)
        r["tied"] = False
        r["front_flops"] = r["name"] in front_flops
        r["front_latency"] = r["name"] in front_latency
        r["budget"] = budget_failures(r, cfg) if finished else []
        r["current"] = current is not None and r["structure"] == current

    def rank(r):
        value = r["objective"]
        return (value is None, -(value or 0.0), *tie_break(r))

    ok.sort(key=rank)
    failed.sort(key=lambda r: r["name"])
    eligible = [r for r in ok if not r["budget"]]
    best = eligible[0] if eligible else None
    tied = []
    if best is not None:
        tied = sorted((r for r in eligible if overlap(r["objective_ci95"], best["objective_ci95"])),
                      key=tie_break)
        for r in tied:
            r["tied"] = len(tied) > 1
    names = {r["name"] for r in tied}
    rows = tied + [r for r in ok if r["name"] not in names]
    order = [r for r in rows if not r["budget"]]
    recommended = order[0] if order else None
    runner_up = order[1] if len(order) > 1 else None
    return {"rows": rows + failed, "recommended": recommended["name"] if recommended else None,
            "runner_up": runner_up["name"] if runner_up else None,
            "best": best["name"] if best else None, "tied": [r["name"] for r in tied],
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


def _ci(ci) -> str | None:
    """An interval compactly, in percent: `98.1–99.5`."""
    return None if ci is None else f"{ci[0] * 100:.1f}–{ci[1] * 100:.1f}"


def table_rows(board: dict) -> list[dict]:
    """Flat rows for a Prefect table artifact (and the markdown)."""
    out = []
    for i, r in enumerate(board["rows"], 1):
        marks = [m for m, on in (("recommended", r["name"] == board["recommended"]),
                                 ("tied", r.get("tied")),
                                 ("front: FLOPs", r["front_flops"]),
                                 ("front: latency", r["front_latency"]),
                                 ("current params.yaml", r["current"])) if on]
        note = ", ".join(marks + r["budget"])
        if r["status"] != "ok":
            note = f"failed: {r.get('reason') or 'unknown'}"
        p50 = r.get("ort_p50_ms_b1")
        out.append({"rank": i if r["status"] == "ok" else None, "candidate": r["name"],
                    "structure": describe(r["structure"]), "val_acc": _pct(r.get("val_accuracy")),
                    "val_ci95": _ci(r.get("val_ci95")),
                    "test_acc": _pct(r.get("test_accuracy")),
                    "params": None if r.get("params") is None else f"{r['params']:,}",
                    "mflops": None if r.get("flops") is None else round(r["flops"] / 1e6, 3),
                    "ort_p50_us": None if p50 is None else round(p50 * 1e3, 1),
                    "train_s": None if r.get("train_seconds") is None else round(r["train_seconds"], 1),
                    "source": r.get("source"), "note": note})
    return out


def _has_ci(*rows: dict) -> bool:
    return all(r.get("val_ci95") is not None for r in rows)


def why_recommended(board: dict, cfg: SearchParams) -> str:
    """Why the recommended candidate won: a tie (intervals overlap) settled by cost or
    params.yaml, or a lead whose intervals are apart. "" with nothing to compare."""
    rows = {r["name"]: r for r in board["rows"]}
    rec, best = rows.get(board["recommended"]), rows.get(board.get("best"))
    second = rows.get(board["runner_up"])
    what = "val accuracy" if cfg.objective == "accuracy" else "the score"
    if rec is None:
        return ""
    scale, unit = (100, " pt") if cfg.objective == "accuracy" else (1, "")
    if rec["tied"]:
        other = best if best is not rec else second  # rec is B*: it tied with the runner-up
        gap = (other["objective"] - rec["objective"]) * scale
        how = ("95% intervals overlap" if _has_ci(rec, other) else
               "equal; no val count for a 95% interval" if gap == 0
               else "95% intervals overlap; one has no val count, so a point value")
        lead = f"{other['name']} {gap:+.2f}{unit}, " if gap > 0 else ""
        return f"tied on {what} with {other['name']} ({lead}{how}); {tie_reason(rec, other)}"
    if second is None:
        return ""
    gap = (rec["objective"] - second["objective"]) * scale
    unit = " pt val accuracy" if cfg.objective == "accuracy" else " on the score"
    apart = ("95% intervals apart" if _has_ci(rec, second) else "no val count for a 95% interval, "
             "so point values")
    return f"{gap:+.2f}{unit} over the runner-up {second['name']}, {apart}"


def headline(board: dict, cfg: SearchParams) -> str:
    rows = {r["name"]: r for r in board["rows"]}
    best = rows.get(board["recommended"])
    failed = sum(r["status"] != "ok" for r in board["rows"])
    if best is None:
        return (f"No candidate is recommended: none of the {len(rows) - failed} finished "
                f"candidates meets the budgets ({failed} failed).")
    text = (f"Recommended: **{best['name']}** ({describe(best['structure'])}): val "
            f"{_pct(best['val_accuracy'])}"
            + (f" (95% CI {_ci(best['val_ci95'])})" if best.get("val_ci95") else "")
            + f", test {_pct(best['test_accuracy'])}, "
            f"{best['params']:,} params, {best['flops'] / 1e6:.2f} MFLOPs")
    why = why_recommended(board, cfg)
    if why:
        text += f"; {why}"
    current = rows.get(board["current"])
    if current is not None and current is not best:
        text += (f"; {(best['val_accuracy'] - current['val_accuracy']) * 100:+.2f} pt val over "
                 f"the structure params.yaml holds now"
                 + (" (tied with it)" if current["tied"] else ""))
    return text + f". {failed} candidate(s) failed."


def markdown(board: dict, cfg: SearchParams, title: str = "Structure search") -> str:
    def cell(v):
        return "—" if v is None else str(v)

    rows = table_rows(board)
    cols = ["rank", "candidate", "structure", "val_acc", "val_ci95", "test_acc", "params", "mflops",
            "ort_p50_us", "train_s", "note"]
    lines = [f"## {title}", "", headline(board, cfg), "",
             f"Target `{cfg.target}`, objective `{cfg.objective}`"
             + (f" (latency_weight {cfg.latency_weight:g} per ms)" if cfg.objective == "score" else "")
             + (f", max_params {cfg.max_params:,}" if cfg.max_params else "")
             + (f", max_flops {cfg.max_flops:,}" if cfg.max_flops else "")
             + ". Ranked on validation accuracy; candidates whose 95% Wilson intervals (`val_ci95`, "
               "%) overlap the best one's tie, and the tie goes to fewer FLOPs, then the structure "
               "params.yaml holds. Test accuracy is reported only. Latency: ONNX "
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
