"""evaluate's headline numbers (evaluate_summary.json) and its markdown report."""
from __future__ import annotations

from slimline.evaluation.selection import Selection, quantize_gate, wins_needed
from slimline.params import EvaluateParams, QuantizeParams
from slimline.report import markdown_table

# Every pair, one row each; and every variant's own facts, which no runtime changes.
PAIR_COLUMNS = ["name", "precision", "val_accuracy", "accuracy", "p50_ms_b1", "p95_ms_b1", "floor_multiple",
                "throughput_b256", "agreement_with_fp32", "within_budget"]
VARIANT_COLUMNS = ["variant", "bytes", "gzip_bytes", "params", "nonzero_params", "flops", "torch_p50_ms_b1"]


def change(drop_pt: float) -> str:
    """A drop as a signed change: 0.4 -> "-0.40", 0 -> "+0.00" (never "-0.00")."""
    return f"{0.0 - drop_pt:+.2f}"


def summary(base: dict, chosen: dict | None, sel: Selection) -> dict:
    """The chosen variant against the baseline: the ratios a reader wants first, the
    latency ratio with its range over the timing rounds (the variant's own, set by evaluate)."""
    # incumbent: what became of the variant last shipped (None: there was none; see select)
    out = {"selected": chosen["name"] if chosen else None, "variant": chosen["variant"] if chosen else None,
           "runtime": chosen["runtime"] if chosen else None, "why": sel.why, "incumbent": sel.incumbent}
    if chosen:
        out.update(size_ratio=base["bytes"] / chosen["bytes"], latency_ratio=chosen["latency_ratio"],
                   latency_ratio_range=chosen["latency_ratio_range"],
                   accuracy_drop_pt=(base["accuracy"] - chosen["accuracy"]) * 100,
                   val_accuracy_drop_pt=(base["val_accuracy"] - chosen["val_accuracy"]) * 100,
                   accuracy=chosen["accuracy"], bytes=chosen["bytes"], p50_ms_b1=chosen["p50_ms_b1"],
                   floor_multiple=chosen["floor_multiple"], tied_with=sel.tied[1:], runner_up=sel.runner_up)
    return out


def gate_text(gate: QuantizeParams, variants: list[dict]) -> str:
    """The quantize gate's rule, and which variants it kept from selection and why."""
    failed = {v["name"]: quantize_gate(v, gate) for v in variants}
    failed = {n: why for n, why in failed.items() if why}
    rule = (f"Quantize gate: a compressed variant is eligible only if its top-1 predictions agree with its "
            f"own fp32 source on at least {gate.min_agreement:.2%} of test (`quantize.min_agreement`; column "
            f"`agreement_with_fp32`) and its val accuracy is at most {gate.max_accuracy_drop * 100:.2f} pt "
            f"below that source's (`quantize.max_accuracy_drop`), both measured in this run.")
    if not failed:
        return rule + " Every variant passes."
    return (rule + f" {len(failed)} variant(s) fail it and are never selected:\n\n"
            + "\n".join(f"- `{n}`: {'; '.join(why)}" for n, why in failed.items()))


INCUMBENT = {None: "No incumbent (models/incumbent.json): the rule alone chose. ",
             "kept": "Incumbent (models/incumbent.json, the variant last shipped and accepted): kept, as no "
                     "other beats it that way and by more than {m:.0%} on the median p50 too. ",
             "replaced": "Incumbent (models/incumbent.json): replaced, beaten that way and by more than "
                         "{m:.0%} on the median p50 too. ",
             "fails a budget": "Incumbent (models/incumbent.json): misses a budget, so the rule alone "
                               "chose. ",
             "absent": "Incumbent (models/incumbent.json): not among the variants, so the rule alone chose. "}


def incumbent_text(cfg: EvaluateParams, outcome: str | None) -> str:
    """What the incumbent rule did this run (slimline.evaluation.selection.select)."""
    return INCUMBENT[outcome].format(m=cfg.switch_margin)


def leaderboard(variants: list[dict], runtimes: list[str], selected: str | None) -> list[dict]:
    """One row per variant, the runtimes side by side: test accuracy, p50 and speed-up over
    the reference baseline on each, and whether the pair is eligible (`-`: not run there)."""
    by = {(v["variant"], v["runtime"]): v for v in variants}
    rows = []
    for name in dict.fromkeys(v["variant"] for v in variants):
        first = next(v for v in variants if v["variant"] == name)
        row = {"variant": name, "bytes": first["bytes"]}
        for r in runtimes:
            v = by.get((name, r))
            mark = "**" if v and v["name"] == selected else ""
            row |= {f"{r} acc": v and v["accuracy"],
                    f"{r} p50 ms": v and f"{mark}{v['p50_ms_b1']:.4g}{mark}",
                    f"{r} speed-up": v and f"{v['latency_ratio']:.2f}x",
                    f"{r} eligible": v and ("yes" if v["within_budget"] else "no")}
        rows.append({k: "-" if x is None else x for k, x in row.items()})
    return rows


def markdown(cfg: EvaluateParams, report: dict, why: str, gate: QuantizeParams) -> str:
    variants, summ, hw = report["variants"], report["selection"], report["hardware"]
    runtimes, ref = report["runtimes"], cfg.runtimes[0]
    pairs = [{c: v[c] for c in PAIR_COLUMNS}
             | {"ci95": f"{v['accuracy_ci95'][0]:.3f}-{v['accuracy_ci95'][1]:.3f}",
                "speedup": f"{v['latency_ratio']:.2f}x [{v['latency_ratio_range'][0]:.2f}, "
                           f"{v['latency_ratio_range'][1]:.2f}]"}
             for v in variants]
    own = list({v["variant"]: {c: v[c] for c in VARIANT_COLUMNS} for v in variants}.values())
    if summ["selected"]:
        lo, hi = summ["latency_ratio_range"]
        head = (f"**Selected: `{summ['variant']}` on {summ['runtime']}** ({summ['why']}). Against the fp32 "
                f"baseline on {ref} (above 1: smaller, faster): bytes ratio {summ['size_ratio']:.1f}x, "
                f"batch-1 "
                f"p50 speed-up {summ['latency_ratio']:.2f}x [{lo:.2f}, {hi:.2f} over rounds]; "
                f"{summ['floor_multiple']:.1f}x its runtime's floor; accuracy change "
                f"against it {change(summ['accuracy_drop_pt'])} pt on test, "
                f"{change(summ['val_accuracy_drop_pt'])} pt on val.")
    else:
        head = f"**No variant selected.** {why}"
    floors = "; ".join(f"{r} {info['version']}: {info['floor_p50_ms'] * 1e3:.1f} us"
                       for r, info in runtimes.items())
    board = markdown_table(leaderboard(variants, cfg.runtimes, summ["selected"]))
    skipped = "".join(f"\n- `{s['variant']}` on {s['runtime']}: {s['reason']}" for s in report["skipped"])
    return (f"## evaluate\n\n{head}\n\nObjective `{cfg.objective}`, budgets: val accuracy drop below the "
            f"baseline on {ref} <= "
            f"{cfg.max_accuracy_drop * 100:.2f} pt, max_bytes {cfg.max_bytes}, max_p50_ms {cfg.max_p50_ms}. "
            f"Each (variant, runtime) pair is a candidate, named `variant@runtime`. "
            f"Selection uses val accuracy; `accuracy` is test (with 95% CI). Latencies: "
            f"{cfg.threads} thread(s), {hw['cpu']}; comparable only on the same hardware. Each p50 is the "
            f"median over {cfg.rounds} rounds (in each, every pair takes turns in blocks of calls); one "
            f"pair beats another only when "
            f"faster by more than {cfg.latency_margin:.0%} in {wins_needed(cfg.rounds)} of them; on equal "
            f"bytes (one file, two runtimes) onnxruntime wins a tie. "
            f"{incumbent_text(cfg, summ.get('incumbent'))}Runtime floors "
            f"(a one-op graph, same settings): {floors}; `floor_multiple` is each "
            f"p50 over its runtime's.\n\n{gate_text(gate, variants)}\n\n"
            f"### Leaderboard: the runtimes side by side\n\n{board}\n\n### Every pair\n\n"
            f"{markdown_table(pairs)}\n\n### Every variant (the same on every runtime)\n\n"
            f"{markdown_table(own)}\n\n"
            + (f"### Skipped pairs (the runtime could not load the file){skipped}\n\n" if skipped else "")
            + "Pareto plots: `reports/pareto_latency.png`, `reports/pareto_bytes.png` (a point per pair). "
            "Model card: `models/ship/MODEL_CARD.md`.\n")
