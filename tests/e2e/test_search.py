"""Structure search: candidates, the leaderboard, and runs as DVC experiments,
locally (K at a time) and on a real Prefect worker (pool mode).

The experiment tests share one copy of the finished tiny pipeline (module
fixture): `prepare` is up to date there, so every candidate restores it from the
cache and trains only its own stage, on tiny structures for 1 epoch.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.project import copy_tree, dvc, sh, update_params

from slimline.repo import stop_group
from slimline.params import ParamsError, SearchParams, Structure, param_count, parse_params
from slimline.search.board import choice_summary, leaderboard, markdown
from slimline.search.space import apply_structure, build_candidates, combinations

pytestmark = pytest.mark.timeout(600)

# Tiny structures; relu (params.yaml's) is not a choice, so --apply-best always changes something.
GRID = {"activation": ["elu", "leaky_relu"], "hidden": [[8], [8, 8]], "conv_channels": [[4]], "dropout": None}


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
    assert len({c.name for c in cands}) == 4 and [c.name for c in build_candidates(raw)] == [c.name for c in cands]
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
            "params": params or (flops and flops // 20), "flops": flops, "ort_p50_ms_b1": p50, "train_seconds": 9.0,
            "source": "ran"}


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
    assert "failed: ERROR [train_baseline]: too small" in md and "recommended, front: FLOPs, front: latency" in md
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
    changed = [l for l in diff.splitlines() if l.startswith(("+", "-")) and not l.startswith(("+++", "---"))]
    assert len(changed) == 4 and "+  hidden: [64, 32]" in diff and "+  activation: elu" in diff
    # every comment survives
    assert [l.split("#", 1)[1] for l in src.read_text().splitlines() if "#" in l] == \
           [l.split("#", 1)[1] for l in path.read_text().splitlines() if "#" in l]


# --- experiments --------------------------------------------------------------------

@pytest.fixture(scope="module")
def search_copy(tiny_pipeline, tmp_path_factory):
    """A private copy of the finished tiny pipeline (shared with the other end-to-end
    tests, so `prepare` is done and cached): candidates only train, 1 epoch each."""
    root = tmp_path_factory.mktemp("search") / "proj"
    copy_tree(tiny_pipeline, root)
    # the student stays smaller than every candidate (the schema's distill.require_smaller)
    update_params(root, {"student": {"conv_channels": [2], "hidden": [4]},
                         "search": {"space": GRID, "workers": 2, "overrides": {"train.epochs": 1}}})
    sh(["git", "commit", "-qam", "tiny search space"], root)
    return root


@pytest.fixture(scope="module")
def grid_run(prefect_api, search_copy):
    from flows.search import search

    return search(root=str(search_copy), workers=2)


def test_four_candidate_grid_completes_locally_two_at_a_time(grid_run, search_copy):
    from flows.search import cores, split_threads
    from slimline.repo import head
    from slimline.search.runs import record_dir

    records = grid_run["records"]
    assert len(records) == 4 and {r["status"] for r in records} == {"ok"}, records
    assert {r["source"] for r in records} == {"ran"}
    for r in records:
        # the -S overrides reached the stage: its report counts this structure's params
        assert r["params"] == param_count(Structure(**r["structure"]), (1, 28, 28))
        assert 0 <= r["val_accuracy"] <= 1 and 0 <= r["test_accuracy"] <= 1 and r["flops"] > 0
        assert r["ort_p50_ms_b1"] > 0 and r["train_seconds"] > 0
        run = json.loads((record_dir(search_copy, head(search_copy), r["name"]) /
                          "train_baseline.run.json").read_text())
        k, threads = split_threads(2, cores())
        assert run["num_threads"] == threads and k * threads <= cores()
    board = grid_run["board"]
    assert board["recommended"] in {r["name"] for r in records}
    md = (search_copy / "reports/search.md").read_text()
    assert all(r["name"] in md for r in records) and "recommended" in md and "front: FLOPs" in md
    assert sh(["git", "status", "--porcelain"], search_copy).stdout == ""  # the workspace is untouched


def test_dvc_exp_show_lists_the_candidates_with_their_overrides(grid_run, search_copy):
    shown = json.loads(dvc("exp", "show", "--json", cwd=search_copy).stdout)
    exps = {e["name"]: e["revs"][0]["data"] for r in shown for e in (r.get("experiments") or [])}
    for r in grid_run["records"]:
        params = exps[r["name"]]["params"]["params.yaml"]["data"]
        assert params["baseline"]["activation"] == r["choice"]["activation"]
        assert params["baseline"]["hidden"] == r["choice"]["hidden"]
        metrics = exps[r["name"]]["metrics"]["reports/train_baseline.json"]["data"]
        assert metrics["val_accuracy"] == r["val_accuracy"]


def test_rerun_skips_done_candidates_and_apply_best_changes_exactly_the_structure_keys(
        grid_run, search_copy, capsys):
    from flows.search import main
    from slimline.repo import head
    from slimline.search.runs import exp_refs

    before_text = (search_copy / "params.yaml").read_text()
    refs = exp_refs(search_copy, head(search_copy))
    try:
        assert main(["--root", str(search_copy), "--apply-best"]) == 0
        assert exp_refs(search_copy, head(search_copy)) == refs  # nothing reran
        out = capsys.readouterr().out
        before, after = yaml.safe_load(before_text), yaml.safe_load((search_copy / "params.yaml").read_text())
        best = next(r for r in grid_run["records"] if r["name"] == grid_run["board"]["recommended"])
        assert after["baseline"]["activation"] == best["choice"]["activation"] != "relu"
        before["baseline"].update(best["choice"])
        assert after == before  # nothing else moved
        assert "-  activation: relu" in out and f"+  activation: {best['choice']['activation']}" in out
        assert f"Recommended: **{best['name']}**" in out
    finally:
        (search_copy / "params.yaml").write_text(before_text)


def test_broken_candidate_is_recorded_as_failed_and_the_search_goes_on(prefect_api, search_copy):
    from flows.search import search

    # [4] ran in the grid; 5 conv blocks with 2x2 pools do not fit 28x28: the stage says so
    update_params(search_copy, {"search": {"space": {"activation": ["elu"], "hidden": [[8]],
                                                     "conv_channels": [[4], [4, 4, 4, 4, 4]]}}})
    try:
        result = search(root=str(search_copy), workers=2)
    finally:
        sh(["git", "checkout", "params.yaml"], search_copy)
    earlier, broken = result["records"]
    assert earlier["status"] == "ok" and earlier["source"] == "reused"
    assert broken["status"] == "failed" and broken["source"] == "ran"
    assert broken["reason"].startswith("ERROR [train_baseline]: input 28x28 is too small")
    assert result["board"]["recommended"] == earlier["name"]
    assert f"failed: {broken['reason']}" in (search_copy / "reports/search.md").read_text()


# --- pool mode -----------------------------------------------------------------------

def test_pool_mode_runs_candidates_on_a_process_worker(prefect_api, search_copy, tmp_path):
    """Two candidates through the `candidate` deployment of prefect.yaml, taken by one
    real process worker that checks the repository out into its own workspace. One
    fails in its stage on the worker, the other finishes and is pushed, so `dvc exp
    show` here lists it."""
    from flows.search import search
    from slimline.repo import head
    from slimline.search.runs import exp_refs

    remote = tmp_path / "dvc-remote"
    dvc("remote", "add", "-d", "shared", str(remote), cwd=search_copy)
    sh(["git", "commit", "-qam", "a DVC remote for the workers"], search_copy)
    prefect_api.prefect("work-pool", "create", "gpu", "--type", "process", cwd=search_copy, check=False)
    prefect_api.prefect("deploy", "--name", "candidate", cwd=search_copy)
    env = prefect_api.env(SLIMLINE_REPO=str(search_copy), SLIMLINE_WORKSPACES=str(tmp_path / "ws"),
                          SLIMLINE_DVC_CACHE=str(search_copy / ".dvc" / "cache"),
                          PREFECT_WORKER_QUERY_SECONDS="2")
    log = (tmp_path / "worker.log").open("w")
    # --limit 1: a worker's runs share its checkout of the deployment
    worker = subprocess.Popen([str(Path(sys.executable).parent / "prefect"), "worker", "start",
                               "--pool", "gpu", "--type", "process", "--limit", "1"],
                              cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    update_params(search_copy, {"search": {"space": {"activation": ["gelu"], "hidden": [[8]],
                                                     "conv_channels": [[4], [4, 4, 4, 4, 4]]}}})
    try:
        result = search(root=str(search_copy), pool=True, timeout_s=400)
    finally:
        stop_group(worker, grace=20)
        log.close()
        sh(["git", "checkout", "params.yaml"], search_copy)
    fine, broken = result["records"]
    assert fine["status"] == "ok", (fine, (tmp_path / "worker.log").read_text()[-4000:])
    assert fine["params"] == param_count(Structure(**fine["structure"]), (1, 28, 28))
    assert fine["ort_p50_ms_b1"] > 0 and fine["baseline"] == head(search_copy)
    assert fine["pushed"].startswith("pushed to git remote 'origin'")
    assert broken["status"] == "failed"
    assert broken["reason"].startswith("ERROR [train_baseline]: input 28x28 is too small")
    assert fine["name"] in exp_refs(search_copy, head(search_copy))  # pushed back from the worker
    assert any(p.is_file() for p in remote.rglob("*")), "the worker pushed no data to the DVC remote"
    assert fine["name"] in dvc("exp", "show", "--json", cwd=search_copy).stdout
    assert result["board"]["recommended"] == fine["name"]
