"""Structure search rules on fixed inputs, no experiments: candidates and their names,
the random strategy, the schema of the `search` section, the leaderboard (ranking, Pareto
fronts, budgets, ties) and --apply-best's params.yaml edit (slimline/search/space.py,
slimline/search/board.py). The searches themselves run in tests/e2e/test_search.py.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from slimline.params import ParamsError, SearchParams, Structure, parse_params
from slimline.search.board import choice_summary, leaderboard, markdown
from slimline.search.space import apply_structure, build_candidates, combinations


def raw_params(**search) -> dict:
    raw = yaml.safe_load((Path(__file__).resolve().parents[2] / "params.yaml").read_text())
    raw["search"] = {**raw.get("search", {}), **search}
    return raw


# --- candidates (no experiments) ---------------------------------------------------

def test_grid_names_are_stable_and_keyed_by_what_shapes_the_result():
    raw = raw_params(space={"activation": ["relu", "elu"], "hidden": [[128], [128, 64]]})
    cands = build_candidates(raw)
    assert [c.choice for c in cands] == [{"hidden": [128], "activation": "relu"},
                                         {"hidden": [128], "activation": "elu"},
                                         {"hidden": [128, 64], "activation": "relu"},
                                         {"hidden": [128, 64], "activation": "elu"}]
    assert (len({c.name for c in cands}) == 4
            and [c.name for c in build_candidates(raw)] == [c.name for c in cands])
    assert cands[3].set_args(1) == ["-S", "baseline.hidden=[128, 64]", "-S", "baseline.activation='elu'",
                                    "-S", "train.num_threads=1"]
    assert cands[0].structure["conv_channels"] == [32, 64] and cands[0].stage == "train_baseline"
    # the same structure gets the same name whichever keys the space lists...
    only_act = build_candidates(raw_params(space={"activation": ["relu"]}))
    assert only_act[0].name == cands[0].name
    # ...and the thread count is not part of it, but the recipe and uncommitted code are
    threads = raw_params(space={"activation": ["relu"]})
    threads["train"]["num_threads"] = 7
    assert build_candidates(threads)[0].name == cands[0].name
    lr = raw_params(space={"activation": ["relu"]})
    lr["train"]["lr"] = 0.01
    assert build_candidates(lr)[0].name != cands[0].name
    assert build_candidates(raw_params(space={"activation": ["relu"]}), "dirty")[0].name != cands[0].name
    recipe = build_candidates(raw_params(space={"activation": ["relu"]}, overrides={"train.epochs": 3}))
    assert recipe[0].overrides == {"baseline.activation": "relu", "train.epochs": 3}
    assert recipe[0].name != cands[0].name


def test_random_strategy_draws_n_of_the_grid_reproducibly():
    space = {"activation": ["relu", "leaky_relu", "elu"], "hidden": [[128], [128, 64], [64]]}
    cfg = parse_params(raw_params(space=space, strategy="random", n=4, seed=3)).search
    drawn = combinations(cfg)
    grid = combinations(parse_params(raw_params(space=space)).search)
    assert len(drawn) == 4 and all(d in grid for d in drawn) and len({json.dumps(d) for d in drawn}) == 4
    assert drawn == combinations(cfg)
    assert drawn != combinations(parse_params(raw_params(space=space, strategy="random", n=4, seed=4)).search)


@pytest.mark.parametrize("search, needle", [
    ({"space": {"hidden": [[0]]}}, "search.space.hidden[0]"),
    ({"space": {"activation": ["tanh"]}}, "search.space.activation.0"),
    ({"space": {"activation": ["relu", "relu"]}}, "lists a choice twice"),
    ({"strategy": "random"}, "needs n"),
    ({"strategy": "random", "n": 99}, "exceeds the 6 combinations"),
    ({"overrides": {"baseline.hidden": [4]}}, "structure keys belong in search.space"),
    ({"overrides": {"train.num_threads": 4}}, "sets threads itself"),
    ({"overrides": {"train.lr_rate": 0.1}}, "not a key of params.yaml"),
    ({"objectiv": "accuracy"}, "search.objectiv: unknown key"),
])
def test_search_section_is_checked_by_the_params_schema(search, needle):
    with pytest.raises(ParamsError, match=None) as err:
        parse_params(raw_params(**search))
    assert needle in str(err.value), str(err.value)


def test_candidate_rejected_by_the_schema_carries_the_reason():
    raw = raw_params(target="student", space={"hidden": [[32], [4096]]})
    ok, big = build_candidates(raw)
    assert ok.error is None and ok.stage == "distill"
    assert "not smaller than the baseline" in big.error


# --- leaderboard on fixed inputs ---------------------------------------------------

def rec(name, val, flops, p50, params=None, status="ok", reason=None, act="relu", hidden=(128,)):
    structure = {**Structure().model_dump(), "activation": act, "hidden": list(hidden)}
    return {"name": name, "structure": structure, "choice": {"activation": act, "hidden": list(hidden)},
            "status": status, "reason": reason, "val_accuracy": val, "test_accuracy": val and val - 0.01,
            "params": params or (flops and flops // 20), "flops": flops, "ort_p50_ms_b1": p50,
            "train_seconds": 9.0, "source": "ran"}


RECORDS = [rec("a", 0.990, 5_000_000, 0.080, act="elu"),                 # best accuracy
           rec("b", 0.985, 2_000_000, 0.050, act="relu"),                # cheaper, on both fronts
           rec("c", 0.980, 3_000_000, 0.090, act="leaky_relu"),          # dominated by b
           rec("d", 0.970, 1_000_000, 0.060, act="relu", hidden=(128, 64)),  # cheapest FLOPs
           rec("e", None, None, None, status="failed", reason="ERROR [train_baseline]: too small")]


def test_leaderboard_ranks_on_val_accuracy_and_marks_the_pareto_fronts():
    cfg = SearchParams()
    board = leaderboard(RECORDS, cfg, current=RECORDS[1]["structure"])
    assert [r["name"] for r in board["rows"]] == ["a", "b", "c", "d", "e"]
    assert board["recommended"] == "a" and board["runner_up"] == "b" and board["current"] == "b"
    assert board["fronts"] == {"flops": ["a", "b", "d"], "latency": ["a", "b"]}
    failed = board["rows"][-1]
    assert failed["status"] == "failed" and not failed["front_flops"]
    md = markdown(board, cfg)
    assert "Recommended: **a**" in md and "+0.50 pt val accuracy over the runner-up b" in md
    assert "+0.50 pt val over the structure params.yaml holds now" in md
    assert ("failed: ERROR [train_baseline]: too small" in md
            and "recommended, front: FLOPs, front: latency" in md)
    summary = {(s["key"], str(s["value"])): s for s in choice_summary(board["rows"])}
    assert summary[("activation", "relu")]["candidates"] == 2
    assert summary[("activation", "relu")]["best_val_accuracy"] == 0.985
    assert summary[("hidden", "[128, 64]")]["mean_val_accuracy"] == 0.970


def test_budgets_and_the_latency_score_change_the_recommendation():
    board = leaderboard(RECORDS, SearchParams(max_flops=3_000_000))
    # the recommended row comes first; the over-budget a follows by objective
    assert board["recommended"] == "b" and [r["name"] for r in board["rows"]] == ["b", "a", "c", "d", "e"]
    assert board["rows"][1]["budget"] == ["5,000,000 FLOPs > max_flops 3,000,000"]
    # score = val - 0.2 x p50 ms: b (0.985 - 0.010) beats a (0.990 - 0.016)
    assert leaderboard(RECORDS, SearchParams(objective="score", latency_weight=0.2))["recommended"] == "b"
    assert leaderboard(RECORDS, SearchParams(max_params=10))["recommended"] is None
    assert "No candidate is recommended" in markdown(leaderboard(RECORDS, SearchParams(max_params=10)),
                                                     SearchParams())


def test_exact_ties_prefer_the_cheaper_then_the_current_structure():
    tied = [rec("x", 0.98, 2_000_000, 0.05, act="elu"), rec("y", 0.98, 2_000_000, 0.05, act="relu")]
    board = leaderboard(tied, SearchParams(), current=tied[1]["structure"])
    assert board["recommended"] == "y" and board["runner_up"] == "x"
    assert ("tied on val accuracy with x (equal; no val count for a 95% interval); the structure "
            "params.yaml already holds") in markdown(board, SearchParams())


def test_apply_structure_writes_only_the_chosen_keys_and_keeps_comments(tmp_path):
    src = Path(__file__).resolve().parents[2] / "params.yaml"
    path = tmp_path / "params.yaml"
    path.write_text(src.read_text())
    diff = apply_structure(path, "student", {"hidden": [64, 32], "activation": "elu"})
    before, after = yaml.safe_load(src.read_text()), yaml.safe_load(path.read_text())
    before["student"].update(hidden=[64, 32], activation="elu")
    assert after == before
    changed = [line for line in diff.splitlines()
               if line.startswith(("+", "-")) and not line.startswith(("+++", "---"))]
    assert len(changed) == 4 and "+  hidden: [64, 32]" in diff and "+  activation: elu" in diff
    # every comment survives
    assert [line.split("#", 1)[1] for line in src.read_text().splitlines() if "#" in line] == \
           [line.split("#", 1)[1] for line in path.read_text().splitlines() if "#" in line]
