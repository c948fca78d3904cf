"""Selection rules (budgets, objectives, ties), the Pareto front and Wilson intervals, on fixed variants."""
from __future__ import annotations

import numpy as np
import pytest

from slimline.evaluation.selection import (
    beats,
    budget_failures,
    candidate,
    pareto_front,
    quantize_gate,
    ratio_range,
    select,
    split_candidate,
    wilson_ci,
)
from slimline.params import EvaluateParams, QuantizeParams


def V(variant, val, acc=None, size=1000, p50=1.0, quant="fp32", rounds=None, runtime="onnxruntime"):
    """A record as evaluate writes one: `variant` on `runtime`, named `variant@runtime`."""
    return {"name": candidate(variant, runtime), "variant": variant, "runtime": runtime,
            "precision": "as stored" if runtime.startswith("onnxruntime") else "f32",
            "val_accuracy": val, "accuracy": val if acc is None else acc, "quantization": quant,
            "bytes": size, "p50_ms_b1": p50 if rounds is None else float(np.median(rounds)),
            **({"p50_ms_b1_rounds": list(rounds)} if rounds is not None else {})}


BASE = candidate("baseline", "onnxruntime")  # the baseline on the reference runtime


def ort(*variants: str):
    """The candidate names of `variants` on onnxruntime (one name: a str, several: a set)."""
    names = [candidate(v, "onnxruntime") for v in variants]
    return names[0] if len(names) == 1 else set(names)


VARIANTS = [
    V("baseline", 0.980, size=100_000, p50=1.00),
    V("fast", 0.978, size=30_000, p50=0.20),
    V("small", 0.976, size=8_000, p50=0.40),
    V("mid", 0.979, size=20_000, p50=0.30),
]


def test_objective_latency_picks_fastest_within_budget():
    chosen, failures = select(VARIANTS, BASE, EvaluateParams(objective="latency"))[:2]
    assert chosen == ort("fast")
    assert set(failures) == {v["name"] for v in VARIANTS}
    assert all(f == [] for f in failures.values())


def test_objective_size_picks_smallest_within_budget():
    chosen = select(VARIANTS, BASE, EvaluateParams(objective="size")).name
    assert chosen == ort("small")


def test_accuracy_drop_is_judged_on_val_not_test():
    # 'cheat' has the best test accuracy and is fastest and smallest, but its val
    # accuracy is 1 pt below the baseline's: it must not be chosen.
    variants = VARIANTS + [V("cheat", 0.970, acc=0.999, size=1_000, p50=0.05)]
    for objective, want in (("latency", ort("fast")), ("size", ort("small"))):
        chosen, failures = select(variants, BASE, EvaluateParams(objective=objective))[:2]
        assert chosen == want
        cheat = failures[ort("cheat")]
        assert len(cheat) == 1
        assert "pt" in cheat[0] and "val" in cheat[0]
        assert "1.00 pt" in cheat[0] and "0.50 pt" in cheat[0]


def gated(name, agree, drop, size, p50, quant="dynamic"):
    """A variant record as evaluate measures it: against its own fp32 source too."""
    return V(name, 0.978, size=size, p50=p50, quant=quant) | {"agreement_with_fp32": agree,
                                                             "val_drop_vs_fp32": drop}


def test_quantize_gate_rejects_forms_unlike_their_fp32_source_and_never_selects_them():
    q = QuantizeParams(min_agreement=0.99, max_accuracy_drop=0.005)
    variants = [gated("baseline", 1.0, 0.0, 100_000, 1.0, quant="fp32"),
                gated("disagrees", 0.985, 0.0, 1_000, 0.1),  # fastest and smallest: the gate alone stops it
                gated("drops", 1.0, 0.006, 1_000, 0.1, quant="static"),
                gated("at_limits", 0.99, 0.005, 5_000, 0.5)]  # both limits are inclusive
    for objective in ("latency", "size"):
        cfg = EvaluateParams(objective=objective)
        assert select(variants, BASE, cfg).name in ort("disagrees", "drops")  # without the gate
        sel = select(variants, BASE, cfg, gate=q)
        assert sel.name == ort("at_limits")
        assert sel.failures[ort("disagrees")] == [
            "top-1 agreement 0.9850 with its fp32 source on test is below quantize.min_agreement 0.99"]
        assert sel.failures[ort("drops")] == [
            "val accuracy 0.60 pt below its fp32 source, over quantize.max_accuracy_drop 0.50 pt"]
        assert sel.failures[ort("at_limits")] == [] and sel.failures[BASE] == []
    assert quantize_gate(variants[1], QuantizeParams(min_agreement=0.98)) == []


def test_nothing_through_the_gate_selects_nothing_and_says_why():
    q = QuantizeParams(min_agreement=1.0)
    variants = [gated("baseline", 1.0, 0.0, 100_000, 1.0, quant="fp32"), gated("q", 0.999, 0.0, 1_000, 0.1)]
    sel = select(variants, BASE, EvaluateParams(max_bytes=10_000), gate=q)
    assert sel.name is None
    assert sel.failures[BASE] == ["100,000 bytes > max_bytes 10,000"]
    assert "quantize.min_agreement 1.0" in sel.failures[ort("q")][0]


def test_accuracy_drop_budget_is_a_fraction_and_inclusive():
    base = V("baseline", 0.98)
    cfg = EvaluateParams(max_accuracy_drop=0.005)  # 0.5 pt
    assert budget_failures(V("at", 0.975), base, cfg) == []  # exactly 0.5 pt (float noise included)
    assert budget_failures(V("under", 0.976), base, cfg) == []
    assert budget_failures(V("better", 0.99), base, cfg) == []
    over = budget_failures(V("over", 0.974), base, cfg)
    assert len(over) == 1 and "0.60 pt" in over[0]
    # the baseline always qualifies against itself
    assert budget_failures(base, base, EvaluateParams(max_accuracy_drop=0.0)) == []


def test_max_bytes_and_max_p50_exclusions():
    cfg = EvaluateParams(objective="size", max_bytes=25_000, max_p50_ms=0.35)
    chosen, failures = select(VARIANTS, BASE, cfg)[:2]
    assert chosen == ort("mid")  # small is too slow, fast too big, baseline both
    assert len(failures[ort("small")]) == 1 and "max_p50_ms" in failures[ort("small")][0]
    assert len(failures[ort("fast")]) == 1 and "max_bytes" in failures[ort("fast")][0]
    assert len(failures[BASE]) == 2
    assert failures[ort("mid")] == []
    # exactly at the limits still qualifies
    chosen, failures = select(VARIANTS, BASE, EvaluateParams(max_bytes=30_000, max_p50_ms=0.20))[:2]
    assert chosen == ort("fast") and failures[ort("fast")] == []


def test_nothing_qualifies_returns_none_with_reasons_for_each():
    variants = VARIANTS + [V("bad", 0.90, size=500, p50=0.01)]
    cfg = EvaluateParams(max_bytes=5_000, max_p50_ms=0.1)
    chosen, failures = select(variants, BASE, cfg)[:2]
    assert chosen is None
    assert set(failures) == {v["name"] for v in variants}
    assert all(failures[n] for n in failures), failures
    assert any("pt" in r for r in failures[ort("bad")])
    assert not any("max_bytes" in r or "max_p50_ms" in r for r in failures[ort("bad")])


def test_tie_break_is_deterministic():
    tied = [V("baseline", 0.98, size=9_000, p50=1.0),
            V("b", 0.98, size=5_000, p50=0.5), V("a", 0.98, size=5_000, p50=0.5),
            V("c", 0.98, size=4_000, p50=0.5)]
    # latency ties break on bytes, then on name
    assert select(tied, BASE, EvaluateParams(objective="latency")).name == ort("c")
    assert select(tied[:3], BASE, EvaluateParams(objective="latency")).name == ort("a")
    assert select(tied[:3][::-1], BASE, EvaluateParams(objective="latency")).name == ort("a")
    # size ties break on latency, then on name
    size_tied = [V("baseline", 0.98, size=9_000, p50=1.0),
                 V("z", 0.98, size=5_000, p50=0.3), V("y", 0.98, size=5_000, p50=0.4),
                 V("x", 0.98, size=5_000, p50=0.4)]
    assert select(size_tied, BASE, EvaluateParams(objective="size")).name == ort("z")
    assert select(size_tied[:1] + size_tied[2:], BASE, EvaluateParams(objective="size")).name == ort("x")


def noisy_rounds(true_ms: float, rng, rounds: int = 5, calls: int = 200) -> list[float]:
    """Per-round p50s as a shared machine gives them: every call +/-30% at random, and one
    round of the five caught in a burst that slows every call in it by 30%."""
    burst = rng.integers(rounds)
    return [float(np.median(true_ms * rng.uniform(0.7, 1.3, calls) * (1.3 if r == burst else 1.0)))
            for r in range(rounds)]


def noisy(truth: dict, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [V(name, 0.98, size=size, quant=quant, rounds=noisy_rounds(ms, rng))
            for name, (ms, size, quant) in truth.items()]


def test_large_differences_keep_one_choice_under_noise():
    truth = {"baseline": (1.00, 900_000, "fp32"), "prune_layer": (0.80, 140_000, "fp32"),
             "student.int8_static": (0.50, 23_000, "static"), "student": (0.25, 59_000, "fp32")}
    picks = {select(noisy(truth, seed), BASE, EvaluateParams()).name for seed in range(20)}
    assert picks == {ort("student")}  # 2x faster than the next: smaller files do not matter
    sel = select(noisy(truth, 0), BASE, EvaluateParams())
    assert sel.tied == [ort("student")] and sel.runner_up == ort("student.int8_static")
    assert sel.why.startswith("faster by ")
    assert "than the runner-up student.int8_static@onnxruntime" in sel.why


def test_near_equal_latencies_tie_and_fewer_bytes_decide_under_noise():
    truth = {"baseline": (1.00, 900_000, "fp32"), "student": (0.250, 59_000, "fp32"),
             "student.fp16": (0.255, 31_000, "fp16"), "student.int8_dynamic": (0.2575, 22_000, "dynamic")}
    for seed in range(20):
        sel = select(noisy(truth, seed), BASE, EvaluateParams())
        assert sel.name == ort("student.int8_dynamic"), (seed, sel)
        assert set(sel.tied) == ort("student", "student.fp16", "student.int8_dynamic")
        assert sel.why.startswith("tie on latency with ") and sel.why.endswith("fewer bytes")


def test_selection_does_not_depend_on_record_order():
    # a ties b and b ties c, but a beats c: a comparator sort could flip on order
    variants = [V("baseline", 0.98, size=9_000, rounds=[2.0] * 5),
                V("a", 0.98, size=3_000, rounds=[1.00] * 5), V("b", 0.98, size=2_000, rounds=[1.08] * 5),
                V("c", 0.98, size=1_000, rounds=[1.16] * 5)]
    assert not beats(variants[1], variants[2], 0.10) and not beats(variants[2], variants[3], 0.10)
    assert beats(variants[1], variants[3], 0.10)
    rng = np.random.default_rng(0)
    for _ in range(6):
        order = [variants[i] for i in rng.permutation(4)]
        sel = select(order, BASE, EvaluateParams())
        # fastest a ties b only; b has fewer bytes
        assert sel.name == ort("b") and sel.tied == [ort("b"), ort("a")]


def test_one_slow_round_never_decides_and_ratios_carry_their_range():
    fast = V("fast", 0.98, size=5_000, rounds=[1.0, 1.0, 1.0, 1.0, 1.0])
    # slower by 20% in two rounds and caught in a burst in a third: 3 of 5, not a win
    other = V("other", 0.98, size=4_000, rounds=[1.2, 1.2, 1.0, 1.0, 2.0])
    assert not beats(fast, other, 0.10)
    assert beats(fast, V("slow", 0.98, rounds=[1.2, 1.2, 1.2, 1.2, 0.9]), 0.10)  # 4 of 5
    base = V("baseline", 0.98, size=9_000, rounds=[4.0, 4.4, 3.6, 4.0, 4.0])
    assert ratio_range(base, fast) == (4.0, 3.6, 4.4)
    sel = select([base, fast, other], BASE, EvaluateParams())
    assert sel.name == ort("other")
    assert sel.why == ("tie on latency with fast@onnxruntime (the fastest is not 10% faster than any of them "
                       "in 4 of 5 rounds); fewer bytes")
    # the margin is a param: at 0 every p50 lead counts
    assert not beats(fast, other, 0.25) and beats(fast, V("s", 0.98, rounds=[1.01] * 4 + [0.5]), 0.0)


def test_ties_on_bytes_and_latency_go_to_val_accuracy_then_fp32():
    base = V("baseline", 0.98, size=9_000, rounds=[2.0] * 5)
    same = [V("q", 0.985, size=5_000, quant="static", rounds=[1.0] * 5),
            V("f", 0.985, size=5_000, rounds=[1.02] * 5),
            V("g", 0.990, size=5_000, quant="fp16", rounds=[1.01] * 5)]
    sel = select([base, *same], BASE, EvaluateParams())
    assert sel.name == ort("g") and sel.why.endswith("higher val accuracy")
    sel = select([base, *same[:2]], BASE, EvaluateParams())
    assert sel.name == ort("f") and sel.why.endswith("fp32 before a quantized form")
    # objective size: the fewest bytes tie here, then the same rules on latency
    sel = select([base, *same], BASE, EvaluateParams(objective="size"))
    assert sel.name == ort("g") and sel.why.startswith("tie on bytes with ")


def test_unknown_baseline_raises_value_error():
    with pytest.raises(ValueError, match="teacher"):
        select(VARIANTS, "teacher", EvaluateParams())



def test_pareto_front_excludes_dominated_points():
    pts = [
        {"name": "a", "accuracy": 0.99, "bytes": 100},
        {"name": "b", "accuracy": 0.98, "bytes": 50},
        {"name": "c", "accuracy": 0.97, "bytes": 60},   # dominated by b
        {"name": "d", "accuracy": 0.99, "bytes": 120},  # dominated by a (same gain, more cost)
        {"name": "e", "accuracy": 0.90, "bytes": 10},
        {"name": "f", "accuracy": 0.90, "bytes": 10},   # exact tie with e: neither dominates
        {"name": "g", "accuracy": 0.98, "bytes": 100},  # dominated by a (same cost, less gain)
    ]
    assert pareto_front(pts, "bytes") == {"a", "b", "e", "f"}


def test_pareto_front_other_cost_and_gain_keys():
    pts = [{"name": "x", "accuracy": 0.9, "val_accuracy": 0.5, "p50_ms_b1": 1.0},
           {"name": "y", "accuracy": 0.8, "val_accuracy": 0.6, "p50_ms_b1": 1.0}]
    assert pareto_front(pts, "p50_ms_b1") == {"x"}
    assert pareto_front(pts, "p50_ms_b1", gain="val_accuracy") == {"y"}
    assert pareto_front([], "bytes") == set()
    assert pareto_front(pts[:1], "p50_ms_b1") == {"x"}


@pytest.mark.parametrize("correct, n", [(0, 10), (1, 10), (5, 10), (9, 10), (10, 10), (0, 1), (1, 1),
                                        (500, 1000), (990, 1000), (1000, 1000), (3, 7)])
def test_wilson_ci_bounds_and_contains_p(correct, n):
    lo, hi = wilson_ci(correct, n)
    assert 0.0 <= lo <= correct / n <= hi <= 1.0
    assert lo < hi


def test_wilson_ci_at_perfect_and_zero_accuracy():
    lo, hi = wilson_ci(1000, 1000)
    assert hi == 1.0
    assert 0.99 < lo < 1.0
    lo, hi = wilson_ci(0, 1000)
    assert lo == 0.0 and 0.0 < hi < 0.01
    assert wilson_ci(0, 0) == (0.0, 1.0)


def test_wilson_ci_narrows_with_more_samples():
    widths = [(lambda ci: ci[1] - ci[0])(wilson_ci(9 * k, 10 * k)) for k in (1, 10, 100, 1000)]
    assert widths == sorted(widths, reverse=True)
    assert all(a > b for a, b in zip(widths, widths[1:], strict=False))


# --- hysteresis against the incumbent ------------------------------------------------------

ON_THE_MARGIN = {"baseline": (1.00, 900_000, "fp32"), "student": (0.250, 59_000, "fp32"),
                 "student.fp16": (0.252, 31_000, "fp16"),
                 # 10% slower than the student: the tie margin itself, where the rule flips
                 "student.int8_dynamic": (0.275, 22_000, "dynamic")}


def test_without_an_incumbent_a_variant_on_the_margin_flaps():
    picks = {select(noisy(ON_THE_MARGIN, seed), BASE, EvaluateParams()).name for seed in range(50)}
    assert picks == ort("student.int8_dynamic", "student.fp16")  # what the incumbent is for


@pytest.mark.parametrize("held", [ort("student.int8_dynamic"), ort("student.fp16"), ort("student")])
def test_an_incumbent_on_the_margin_is_never_replaced_under_noise(held):
    for seed in range(50):
        sel = select(noisy(ON_THE_MARGIN, seed), BASE, EvaluateParams(), incumbent=held)
        assert (sel.name, sel.incumbent) == (held, "kept"), (seed, sel)
        # the rule alone chose it too, or would have shipped another: then the report says by how much
        assert sel.why.startswith(("the incumbent, chosen again: ", "the incumbent, kept: the rule's pick"))
        assert sel.why.startswith("the incumbent, chosen again") or "25% on the median" in sel.why


def test_a_clearly_faster_challenger_always_replaces_the_incumbent():
    truth = {"baseline": (1.00, 900_000, "fp32"), "prune_layer": (0.50, 140_000, "fp32"),
             "student": (0.25, 59_000, "fp32"), "student.fp16": (0.252, 31_000, "fp16")}
    for seed in range(50):
        sel = select(noisy(truth, seed), BASE, EvaluateParams(), incumbent=ort("prune_layer"))
        # both students beat it clearly; among them the rule's tie goes to fewer bytes
        assert (sel.name, sel.incumbent) == (ort("student.fp16"), "replaced"), (seed, sel)
        assert sel.why.startswith("replaces the incumbent `prune_layer@onnxruntime`: faster by ")


def test_an_incumbent_that_misses_a_budget_is_replaced_and_a_missing_one_is_ignored():
    variants = [V("baseline", 0.980, size=100_000, rounds=[1.0] * 5),
                V("held", 0.960, size=10_000, rounds=[0.30] * 5),  # 2 pt below: over the 0.5 pt budget
                V("other", 0.979, size=20_000, rounds=[0.31] * 5)]
    sel = select(variants, BASE, EvaluateParams(), incumbent=ort("held"))
    assert (sel.name, sel.incumbent) == (ort("other"), "fails a budget")
    assert "incumbent `held@onnxruntime` fails" in sel.why
    rule = select(variants, BASE, EvaluateParams())
    gone = select(variants, BASE, EvaluateParams(), incumbent=ort("renamed"))
    assert (gone.name, gone.incumbent, rule.incumbent) == (rule.name, "absent", None)


def test_objective_size_replaces_the_incumbent_for_fewer_bytes_only():
    variants = [V("baseline", 0.98, size=100_000, rounds=[1.0] * 5),
                V("held", 0.98, size=9_000, rounds=[1.0] * 5), V("twin", 0.98, size=9_000, rounds=[0.95] * 5)]
    cfg = EvaluateParams(objective="size")
    # same bytes, not 25% faster
    assert select(variants, BASE, cfg, incumbent=ort("held")).name == ort("held")
    smaller = [*variants, V("smaller", 0.98, size=8_000, rounds=[1.1] * 5)]
    assert select(smaller, BASE, cfg, incumbent=ort("held")).incumbent == "replaced"


def test_switch_margin_below_the_tie_margin_is_refused():
    with pytest.raises(ValueError, match="switch_margin .* must be at least evaluate.latency_margin"):
        EvaluateParams(latency_margin=0.2, switch_margin=0.1)


# --- candidates: one variant on several runtimes ---------------------------------------------

def test_candidate_names_round_trip_and_a_bare_name_ran_on_onnxruntime():
    assert candidate("student.int8_static", "openvino") == "student.int8_static@openvino"
    assert split_candidate("student.int8_static@openvino-bf16") == ("student.int8_static", "openvino-bf16")
    assert split_candidate("student.int8_static") == ("student.int8_static", "onnxruntime")


def two_runtimes(ort_rounds, ov_rounds) -> list[dict]:
    """The baseline and one student file, each on onnxruntime and OpenVINO (equal bytes per file)."""
    return [V("baseline", 0.98, size=100_000, rounds=[2.0] * 5),
            V("baseline", 0.98, size=100_000, rounds=[1.9] * 5, runtime="openvino"),
            V("student", 0.979, size=20_000, rounds=ort_rounds),
            V("student", 0.979, size=20_000, rounds=ov_rounds, runtime="openvino")]


@pytest.mark.parametrize("objective", ["latency", "size"])
def test_the_same_file_within_the_margin_on_two_runtimes_goes_to_onnxruntime(objective):
    # OpenVINO 5% faster in every round: within latency_margin, a tie; equal bytes: onnxruntime
    variants = two_runtimes([1.0] * 5, [0.95] * 5)
    sel = select(variants, BASE, EvaluateParams(objective=objective))
    assert sel.name == "student@onnxruntime"
    assert sel.tied == ["student@onnxruntime", "student@openvino"]
    assert sel.why.endswith("onnxruntime on equal bytes"), sel.why
    for order in (variants[::-1], variants[1:] + variants[:1]):  # not by the records' order
        assert select(order, BASE, EvaluateParams(objective=objective)).name == "student@onnxruntime"


def test_a_runtime_clearly_faster_in_4_of_5_rounds_wins_with_the_same_file():
    # OpenVINO twice as fast in 4 rounds, caught in a slow spell in the fifth: it beats onnxruntime
    variants = two_runtimes([1.0] * 5, [0.5, 0.5, 1.05, 0.5, 0.5])
    sel = select(variants, BASE, EvaluateParams())
    assert (sel.name, sel.tied, sel.runner_up) == ("student@openvino", ["student@openvino"],
                                                   "student@onnxruntime")
    assert sel.why.startswith("faster by 2.00x") and "the runner-up student@onnxruntime" in sel.why
    # faster in only 3 of 5: no win, so the tie goes to onnxruntime
    assert select(two_runtimes([1.0] * 5, [0.5, 0.5, 1.0, 1.0, 0.5]), BASE,
                  EvaluateParams()).name == "student@onnxruntime"


def test_an_openvino_incumbent_that_ties_stays():
    variants = two_runtimes([0.95] * 5, [1.0] * 5)  # onnxruntime 5% faster: a tie
    assert select(variants, BASE, EvaluateParams()).name == "student@onnxruntime"  # the rule alone
    sel = select(variants, BASE, EvaluateParams(), incumbent="student@openvino")
    assert (sel.name, sel.incumbent, sel.runner_up) == ("student@openvino", "kept", "student@onnxruntime")
    assert sel.why.startswith("the incumbent, kept: the rule's pick `student@onnxruntime`")
    # the same file on onnxruntime, clearly faster (2x in every round): it replaces the incumbent
    sel = select(two_runtimes([0.5] * 5, [1.0] * 5), BASE, EvaluateParams(), incumbent="student@openvino")
    assert (sel.name, sel.incumbent) == ("student@onnxruntime", "replaced")
