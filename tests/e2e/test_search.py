"""Structure search end to end: candidates run as DVC experiments, locally (K at a time)
and on a real Prefect worker (pool mode), ranked on the leaderboard. The rules on fixed
inputs (names, schema, leaderboard, --apply-best's edit) are in tests/unit/test_search_rules.py.

On the toy project (tests/support/toy.py): a candidate is a `dvc exp run` of train_baseline
(the real stage graph, toy commands) with the structure's `-S` overrides, whose stage reports
that structure's params and FLOPs (counted as the real cnn has them), a val accuracy the
structure decides, and a run record; a structure too deep for the input fails in the
stage, as the real one does. The experiment tests share one copy (module fixture):
`prepare` is up to date there, so every candidate restores it from the cache.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from slimline.params import Structure, param_count
from slimline.repo import stop_group
from tests.support.project import copy_tree, dvc, sh, update_params

pytestmark = pytest.mark.timeout(600)

# Tiny structures; relu (params.yaml's) is not a choice, so --apply-best always changes something.
GRID = {"activation": ["elu", "leaky_relu"], "hidden": [[8], [8, 8]], "conv_channels": [[4]], "dropout": None}
# Pool mode's own pool and deployment on the Prefect server every test module shares: no
# other module's worker takes its runs, and no other module's `prefect deploy --all`
# re-registers the deployment its runs are made from.
POOL, DEPLOYMENT = "search-gpu", "search-candidate"


# --- experiments --------------------------------------------------------------------

@pytest.fixture(scope="module")
def search_copy(toy_project, tmp_path_factory):
    """A private copy of the finished toy project (`prepare` is done and cached):
    candidates only train, 1 epoch each."""
    root = tmp_path_factory.mktemp("search") / "proj"
    copy_tree(toy_project, root)
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
    """Two candidates through the `candidate` deployment of prefect.yaml (registered as
    DEPLOYMENT on POOL), taken by one real process worker that checks the repository out
    into its own workspace. One
    fails in its stage on the worker, the other finishes and is pushed, so `dvc exp
    show` here lists it."""
    from flows.search import search
    from slimline.repo import head
    from slimline.search.runs import exp_refs

    prefect_api.prefect("work-pool", "create", POOL, "--type", "process", cwd=search_copy, check=False)
    (tmp_path / "tmp").mkdir()  # the worker's temporary files (tests/support/workers.py)
    env = prefect_api.env(SLIMLINE_REPO=str(search_copy), SLIMLINE_WORKSPACES=str(tmp_path / "ws"),
                          TMPDIR=str(tmp_path / "tmp"),
                          SLIMLINE_DVC_CACHE=str(search_copy / ".dvc" / "cache"),
                          PREFECT_WORKER_QUERY_SECONDS="2")
    log = (tmp_path / "worker.log").open("w")
    # Started first, so that it starts up while the deployment is made; it checks the
    # repository out only when it takes a run. --limit 1: a worker's runs share its checkout.
    worker = subprocess.Popen([str(Path(sys.executable).parent / "prefect"), "worker", "start",
                               "--pool", POOL, "--type", "process", "--limit", "1"],
                              cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    remote = tmp_path / "dvc-remote"
    try:
        dvc("remote", "add", "-d", "shared", str(remote), cwd=search_copy)
        # prefect.yaml's `candidate` deployment as it is, under this module's names
        spec = yaml.safe_load((search_copy / "prefect.yaml").read_text())
        (entry,) = [d for d in spec["deployments"] if d["name"] == "candidate"]
        entry["name"], entry["work_pool"]["name"] = DEPLOYMENT, POOL
        (search_copy / "prefect.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
        sh(["git", "commit", "-qam", "a DVC remote for the workers"], search_copy)
        prefect_api.prefect("deploy", "--name", DEPLOYMENT, cwd=search_copy)
        update_params(search_copy, {"search": {"space": {"activation": ["gelu"], "hidden": [[8]],
                                                         "conv_channels": [[4], [4, 4, 4, 4, 4]]}}})
        result = search(root=str(search_copy), pool=True, timeout_s=400,
                        deployment=f"slimline-candidate/{DEPLOYMENT}")
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
