"""Choosing the model to ship: budgets, objective, Pareto fronts, confidence intervals.

Pure functions on the records of reports/evaluate.json, so the rules are tested on
fixed inputs. A record is a candidate: one variant on one runtime, named
`variant@runtime` (`candidate`); the rules compare candidates across runtimes as
across variants. Selection uses *validation* accuracy; test accuracy is only
reported (choosing on the test set would inflate it).
"""
from __future__ import annotations

import math
import statistics
from typing import NamedTuple

from slimline.params import EvaluateParams, QuantizeParams

SEP = "@"
PREFERRED_RUNTIME = "onnxruntime"  # on equal bytes and a latency tie: fewer packages, the lowest floor


def candidate(variant: str, runtime: str) -> str:
    """The name of `variant` on `runtime`: "student.int8_static@openvino"."""
    return f"{variant}{SEP}{runtime}"


def split_candidate(name: str) -> tuple[str, str]:
    """(variant, runtime) of a candidate's name; a bare variant name (from before
    runtimes were chosen) ran on onnxruntime."""
    variant, sep, runtime = name.rpartition(SEP)
    return (variant, runtime) if sep else (name, PREFERRED_RUNTIME)


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
            o is not v and o[gain] >= v[gain] and o[cost] <= v[cost]
            and (o[gain] > v[gain] or o[cost] < v[cost])
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
                   f"evaluate.max_accuracy_drop {cfg.max_accuracy_drop * 100:.2f} pt)")
    if cfg.max_bytes is not None and v["bytes"] > cfg.max_bytes:
        why.append(f"{v['bytes']:,} bytes > max_bytes {cfg.max_bytes:,}")
    if cfg.max_p50_ms is not None and v["p50_ms_b1"] > cfg.max_p50_ms:
        why.append(f"p50 {v['p50_ms_b1']:.4f} ms > max_p50_ms {cfg.max_p50_ms}")
    return why


def quantize_gate(v: dict, q: QuantizeParams) -> list[str]:
    """Why variant v is not a faithful form of its own fp32 source (empty: it passes):
    top-1 agreement on test under quantize.min_agreement, or val accuracy more than
    quantize.max_accuracy_drop below the source's. Reads "agreement_with_fp32" and
    "val_drop_vs_fp32" (measure.against_fp32); an fp32 export passes against itself.
    It lives here, not in quantize, so that measured numbers decide what ships but never
    which files quantize writes."""
    why = []
    agree, drop = v["agreement_with_fp32"], v["val_drop_vs_fp32"]
    if agree < q.min_agreement:
        why.append(f"top-1 agreement {agree:.4f} with its fp32 source on test is below "
                   f"quantize.min_agreement {q.min_agreement}")
    if drop > q.max_accuracy_drop + 1e-12:
        why.append(f"val accuracy {drop * 100:.2f} pt below its fp32 source, over quantize.max_accuracy_drop "
                   f"{q.max_accuracy_drop * 100:.2f} pt")
    return why


def rounds_of(v: dict) -> list[float]:
    """Every round's p50 (a record from before rounds were kept: its one p50)."""
    return v.get("p50_ms_b1_rounds") or [v["p50_ms_b1"]]


def wins_needed(n_rounds: int) -> int:
    """Rounds one variant must win to beat another: 4 of 5, so one bad round never decides."""
    return max(1, math.ceil(0.8 * n_rounds))


def beats(a: dict, b: dict, margin: float) -> bool:
    """a is faster than b: b's p50 exceeds a's by more than `margin` (relative) in at
    least 4 of 5 rounds (rounds are paired: timed back to back in the same pass)."""
    ra, rb = rounds_of(a), rounds_of(b)
    if len(ra) != len(rb):  # not timed together: only the medians compare
        ra, rb = [v_median(a)], [v_median(b)]
    return sum(y > x * (1 + margin) for x, y in zip(ra, rb, strict=True)) >= wins_needed(len(ra))


def v_median(v: dict) -> float:
    return statistics.median(rounds_of(v))


def ratio_range(num: dict, den: dict) -> tuple[float, float, float]:
    """num's p50 over den's: (ratio of the medians, lowest and highest per-round ratio)."""
    rn, rd = rounds_of(num), rounds_of(den)
    per = ([x / y for x, y in zip(rn, rd, strict=True)] if len(rn) == len(rd)
           else [v_median(num) / v_median(den)])
    return v_median(num) / v_median(den), min(per), max(per)


class Selection(NamedTuple):
    name: str | None  # the variant to ship; None when none meets every budget
    failures: dict[str, list[str]]  # {variant: why it misses a budget or the gate}; [] where it qualifies
    tied: list[str]  # the variants the winner tied with on the objective (winner first)
    runner_up: str | None
    why: str  # one line: why the winner won
    # What became of the incumbent: None (there was none), "kept", "replaced", "fails a
    # budget" or "absent" (not among this run's variants).
    incumbent: str | None = None


def _other_runtime(v: dict) -> bool:
    return v.get("runtime", PREFERRED_RUNTIME) != PREFERRED_RUNTIME


def _tie_break(v: dict) -> tuple:
    # fewer bytes; on equal bytes (the same file on two runtimes, as a rule) onnxruntime;
    # higher val accuracy, fp32 before a quantized form, name
    return v["bytes"], _other_runtime(v), -v["val_accuracy"], v["quantization"] != "fp32", v["name"]


def _latency_tied(pool: list[dict], margin: float) -> tuple[dict, list[dict]]:
    """(fastest by median p50, every variant it does not beat). Comparing pairs is not
    transitive, so the tied set is taken against that one variant, never by sorting."""
    fastest = min(pool, key=lambda v: (v_median(v), v["name"]))
    return fastest, [v for v in pool if v is fastest or not beats(fastest, v, margin)]


def _reason(winner: dict, others: list[dict]) -> str:
    """What decided between the winner and the variants it tied with."""
    keys = [("fewer bytes", lambda v: v["bytes"]), (f"{PREFERRED_RUNTIME} on equal bytes", _other_runtime),
            ("higher val accuracy", lambda v: -v["val_accuracy"]),
            ("fp32 before a quantized form", lambda v: v["quantization"] != "fp32")]
    rest = list(others)
    for text, key in keys:
        if all(key(winner) < key(o) for o in rest):
            return text
        rest = [o for o in rest if key(o) == key(winner)]
    return "the same bytes, val accuracy and form: by name"


def replaces(challenger: dict, incumbent: dict, cfg: EvaluateParams) -> bool:
    """The challenger clearly beats the incumbent, on evidence that noise does not fake:
    objective latency, faster by more than latency_margin in 4 of 5 rounds *and* by more
    than switch_margin on the median p50; objective size, fewer bytes (bytes are exact),
    or on equal bytes the latency rule."""
    if cfg.objective == "size" and challenger["bytes"] != incumbent["bytes"]:
        return challenger["bytes"] < incumbent["bytes"]
    return (beats(challenger, incumbent, cfg.latency_margin)
            and v_median(incumbent) > v_median(challenger) * (1 + cfg.switch_margin))


def _versus(challenger: dict, incumbent: dict, cfg: EvaluateParams) -> str:
    """How the challenger compares with the incumbent, against what replacing it takes."""
    if cfg.objective == "size" and challenger["bytes"] != incumbent["bytes"]:
        return f"{incumbent['bytes'] / challenger['bytes']:.2f}x fewer bytes"
    r, lo, hi = ratio_range(incumbent, challenger)
    n = len(rounds_of(challenger))
    return (f"faster by {r:.2f}x [{lo:.2f}, {hi:.2f}] over the rounds, where replacing it takes more than "
            f"{cfg.latency_margin:.0%} in {wins_needed(n)} of {n} rounds and {cfg.switch_margin:.0%} on the "
            f"median")


def select(variants: list[dict], baseline: str, cfg: EvaluateParams,
           gate: QuantizeParams | None = None, incumbent: str | None = None) -> Selection:
    """The candidate (variant on a runtime) to ship, by a rule that timing noise cannot
    flip, with hysteresis against `incumbent` (the candidate last shipped and accepted;
    None: there is none). `baseline` is the baseline on the reference runtime: the
    budgets are against it.

    Without an incumbent, `choose` below decides. With one that is within every budget,
    it stays unless a challenger `replaces` it; among several that do, `choose` picks.
    An incumbent that misses a budget, or is not among the variants, is dropped.

    Eligible: within every evaluate budget and, with `gate`, through the quantize gate
    (quantize_gate); the rest are never chosen, and `failures` says why.
    """
    by_name = {v["name"]: v for v in variants}
    if baseline not in by_name:
        raise ValueError(f"baseline variant {baseline!r} is not among the evaluated variants")
    base = by_name[baseline]
    failures = {v["name"]: budget_failures(v, base, cfg) + (quantize_gate(v, gate) if gate else [])
                for v in variants}
    eligible = [v for v in variants if not failures[v["name"]]]
    if not eligible:
        return Selection(None, failures, [], None, "no variant meets every budget",
                         None if incumbent is None else "fails a budget")
    rule = choose(eligible, failures, cfg)
    if incumbent is None:
        return rule
    inc = by_name.get(incumbent)
    if inc is None:
        return rule._replace(incumbent="absent", why=f"{rule.why} (the incumbent `{incumbent}` is not "
                                                     f"among this run's variants)")
    if failures[incumbent]:
        return rule._replace(incumbent="fails a budget",
                             why=f"{rule.why} (the incumbent `{incumbent}` fails: "
                                 f"{'; '.join(failures[incumbent])})")
    if rule.name == incumbent:
        return rule._replace(incumbent="kept", why=f"the incumbent, chosen again: {rule.why}")
    challengers = [v for v in eligible if v is not inc and replaces(v, inc, cfg)]
    if not challengers:
        rival = by_name[rule.name]
        # runner_up: what the rule alone would have shipped; no tie: the incumbent stands alone
        return Selection(incumbent, failures, [incumbent], rule.name, "the incumbent, kept: the rule's pick "
                         f"`{rival['name']}` is {_versus(rival, inc, cfg)}", "kept")
    new = choose(challengers, failures, cfg)
    return new._replace(incumbent="replaced",
                        why=f"replaces the incumbent `{incumbent}`: "
                            f"{_versus(by_name[new.name], inc, cfg)}; among challengers, {new.why}")


def annotate(variants: list[dict], baseline: str, sel: Selection, gate: QuantizeParams) -> dict:
    """Write on every record what evaluate found: on which Pareto fronts it is, whether it
    passes the quantize gate and every budget (and if not, each reason, naming its param),
    and its speed-up over `baseline` (the ratio of the median p50s and its range over the
    rounds). Returns the baseline's record."""
    for cost, key in (("p50_ms_b1", "pareto_latency"), ("bytes", "pareto_bytes")):
        front = pareto_front(variants, cost)
        for v in variants:
            v[key] = v["name"] in front
    base = next(v for v in variants if v["name"] == baseline)
    for v in variants:
        v["quantize_gate_passed"] = not quantize_gate(v, gate)
        v["within_budget"] = not sel.failures[v["name"]]  # eligible: every budget and the gate
        v["budget_misses"] = sel.failures[v["name"]]
        ratio, lo, hi = ratio_range(base, v)
        v["latency_ratio"], v["latency_ratio_range"] = ratio, [lo, hi]
    return base


def choose(eligible: list[dict], failures: dict[str, list[str]], cfg: EvaluateParams) -> Selection:
    """The rule among eligible variants (every one within every budget), incumbent aside.
    objective latency: among the variants within every budget, F* has the lowest
    median p50; the tied set is every variant F* does not beat (see `beats`); within
    it the winner has fewer bytes, then (equal bytes: the same file on two runtimes)
    onnxruntime, then higher val accuracy, then fp32 before a quantized form, then the
    first name. objective size swaps the roles: the tied set is the candidates with the
    fewest bytes (bytes are exact), and among them latency decides by the same rounds
    rule, then onnxruntime, val accuracy, fp32, name.
    """
    margin = cfg.latency_margin
    if cfg.objective == "latency":
        _, tied = _latency_tied(eligible, margin)
        winner = min(tied, key=_tie_break)
        others = [v for v in tied if v is not winner]
        in_tie = {v["name"] for v in tied}
        rest = sorted((v for v in eligible if v["name"] not in in_tie),
                      key=lambda v: (v_median(v), v["name"]))
        if others:
            runner = min(others, key=_tie_break)
            n = len(rounds_of(winner))
            why = (f"tie on latency with {', '.join(o['name'] for o in sorted(others, key=_tie_break))} "
                   f"(the fastest is not {margin:.0%} faster than any of them in {wins_needed(n)} of {n} "
                   f"rounds); {_reason(winner, others)}")
        elif rest:
            runner = rest[0]
            r, lo, hi = ratio_range(runner, winner)
            why = f"faster by {r:.2f}x [{lo:.2f}, {hi:.2f}] than the runner-up {runner['name']}"
        else:
            runner, why = None, "the only variant within every budget"
    else:
        fewest = min(v["bytes"] for v in eligible)
        same = [v for v in eligible if v["bytes"] == fewest]
        fastest, tied = _latency_tied(same, margin)
        key = lambda v: _tie_break(v)[1:]  # noqa: E731 - the bytes are equal
        winner = fastest if len(tied) == 1 else min(tied, key=key)
        others = [v for v in same if v is not winner]
        rest = sorted((v for v in eligible if v["bytes"] > fewest), key=lambda v: (v["bytes"], v["name"]))
        if others:
            runner = min(others, key=lambda v: (v_median(v), v["name"]))
            if len(tied) == 1:
                r, lo, hi = ratio_range(runner, winner)
                how = f"faster by {r:.2f}x [{lo:.2f}, {hi:.2f}] than {runner['name']}"
            else:
                how = _reason(winner, [o for o in tied if o is not winner])
            why = f"tie on bytes with {', '.join(o['name'] for o in others)}; {how}"
        elif rest:
            runner = rest[0]
            why = f"{runner['bytes'] / winner['bytes']:.2f}x fewer bytes than the runner-up {runner['name']}"
        else:
            runner, why = None, "the only variant within every budget"
        tied = same
    tied_names = [winner["name"]] + [v["name"] for v in sorted(tied, key=_tie_break) if v is not winner]
    return Selection(winner["name"], failures, tied_names, runner["name"] if runner else None, why)
