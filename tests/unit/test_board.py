"""The structure search's recommendation rule on synthetic records: candidates whose
95% Wilson intervals of val accuracy overlap the best one's tie (slimline/search/board.py)."""
from __future__ import annotations

import random

from slimline.params import SearchParams, Structure
from slimline.search.board import leaderboard, markdown


def rec(name, correct, flops, n=500, params=None, act="relu", p50=0.05):
    structure = {**Structure().model_dump(), "activation": act, "hidden": [len(name) * 8 + flops % 7]}
    return {"name": name, "structure": structure, "choice": {"activation": act}, "status": "ok",
            "reason": None, "val_accuracy": correct / n, "test_accuracy": correct / n,
            "val_count": n, "val_correct": correct, "params": params or flops // 20, "flops": flops,
            "ort_p50_ms_b1": p50, "train_seconds": 1.0, "source": "ran"}


def test_a_one_image_lead_on_500_is_a_tie_decided_by_fewer_flops():
    records = [rec("big", 496, 5_000_000), rec("small", 495, 2_000_000)]  # 99.2% vs 99.0%
    board = leaderboard(records, SearchParams())
    assert board["best"] == "big" and board["recommended"] == "small" and board["runner_up"] == "big"
    assert [r["tied"] for r in board["rows"]] == [True, True]
    assert board["rows"][0]["val_ci95"][0] < 0.99 < board["rows"][0]["val_ci95"][1]
    md = markdown(board, SearchParams())
    assert "tied on val accuracy with big (big +0.20 pt, 95% intervals overlap); fewer FLOPs" in md
    assert "| 97.7–99.6 |" in md and "recommended, tied" in md


def test_a_large_lead_wins_outright():
    records = [rec("cheap", 400, 1_000_000), rec("good", 475, 5_000_000)]  # 80% vs 95%
    board = leaderboard(records, SearchParams())
    assert board["recommended"] == "good" and board["runner_up"] == "cheap" and board["tied"] == ["good"]
    assert not any(r["tied"] for r in board["rows"])
    assert "+15.00 pt val accuracy over the runner-up cheap, 95% intervals apart" in \
        markdown(board, SearchParams())


def test_non_transitive_ties_do_not_depend_on_record_order():
    # A ties B and B ties C, but A beats C: the tied set is taken against A (the best) only
    records = [rec("a", 480, 9_000_000), rec("b", 468, 5_000_000), rec("c", 455, 1_000_000)]
    boards = []
    for seed in range(6):
        shuffled = records[:]
        random.Random(seed).shuffle(shuffled)
        boards.append(leaderboard(shuffled, SearchParams()))
    assert {b["recommended"] for b in boards} == {"b"}
    assert {tuple(r["name"] for r in b["rows"]) for b in boards} == {("b", "a", "c")}
    assert boards[0]["tied"] == ["b", "a"] and boards[0]["runner_up"] == "a"


def test_ties_at_equal_flops_go_to_the_current_structure():
    records = [rec("x", 496, 2_000_000, act="elu"), rec("y", 494, 2_000_000, act="leaky_relu")]
    board = leaderboard(records, SearchParams(), current=records[1]["structure"])
    assert board["recommended"] == "y" and board["current"] == "y"
    assert "the structure params.yaml already holds" in markdown(board, SearchParams())


def test_score_shifts_the_interval_by_the_latency_term():
    # 95% vs 80%: apart on accuracy; 0.2 per ms x 0.8 ms brings "good" to a score of 0.79
    records = [rec("cheap", 400, 1_000_000, p50=0.0), rec("good", 475, 5_000_000, p50=0.8)]
    cfg = SearchParams(objective="score", latency_weight=0.2)
    board = leaderboard(records, cfg)
    good = next(r for r in board["rows"] if r["name"] == "good")
    assert abs(good["objective_ci95"][0] - (good["val_ci95"][0] - 0.16)) < 1e-12
    assert board["best"] == "cheap" and board["recommended"] == "cheap" and board["tied"] == ["cheap", "good"]


def test_records_without_a_val_count_tie_only_when_equal():
    old = [{**rec("p", 496, 5_000_000), "val_count": None, "val_correct": None},
           {**rec("q", 495, 2_000_000), "val_count": None, "val_correct": None}]
    board = leaderboard(old, SearchParams())
    assert board["recommended"] == "p" and board["rows"][0]["val_ci95"] is None and board["tied"] == ["p"]
