"""Deployments, workers, concurrency, crash detection and the dashboard, against a
real Prefect server (tests/conftest.py `prefect_api`) and real process workers.

The toy project (tests/support/toy.py: the real flows, prefect.yaml and automation, with
sub-second stages) plays the team's git repository: workers clone it into their own
workspaces (flows/workspace.py), sharing its DVC cache as workers on one machine do, so
unchanged stages are restored rather than recomputed. What the stages compute is tested
by the tiny ML build elsewhere; here it is what the deployments, workers and server do.

The server is shared with the other test modules for the whole run, so the team's copy
(own_names) uses names of its own: work pools orch-cpu and orch-gpu instead of cpu and
gpu (flows.deploy creates the pools prefect.yaml names), the search's `candidate` deployment
renamed orch-candidate (test_search.py deploys `candidate` on pool gpu), and its deployments
tagged TAG, to which the crash automation is scoped
here: it crashes this module's runs only, never another module's heartbeating runs.
"""
from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.support.prefect_server import artifacts, client_call
from tests.support.processes import alive, descendants, kill_tree
from tests.support.project import commit, copy_tree, dvc, sh
from tests.support.workers import Team, finished, state_names, wait_for

pytestmark = pytest.mark.timeout(900)

POOLS = {"cpu": "orch-cpu", "gpu": "orch-gpu"}  # prefect.yaml's pools -> this module's
RENAMED = {"candidate": "orch-candidate"}
TAG = "slimline-test-orchestration"
AUTOMATION = "infra/automations/crash-unresponsive-runs.yaml"


# --- fixtures --------------------------------------------------------------------

def own_names(origin: Path) -> None:
    """Rename the pools and deployments of origin's prefect.yaml, tag its deployments and
    scope the crash automation to that tag; commit, as the team would."""
    path = origin / "prefect.yaml"
    spec = yaml.safe_load(path.read_text())
    for dep in spec["deployments"]:
        dep["name"] = RENAMED.get(dep["name"], dep["name"])
        dep["work_pool"]["name"] = POOLS[dep["work_pool"]["name"]]
        dep["tags"] = [*dep.get("tags", []), TAG]
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    path = origin / AUTOMATION
    autos = yaml.safe_load(path.read_text())
    for auto in autos["automations"]:
        trigger = auto["trigger"]
        related = trigger["match_related"]
        # a list of specifications: every one must match a related resource of the event
        trigger["match_related"] = [*(related if isinstance(related, list) else [related]),
                                    {"prefect.resource.role": "tag",
                                     "prefect.resource.id": f"prefect.tag.{TAG}"}]
    path.write_text(yaml.safe_dump(autos, sort_keys=False))
    commit(origin, "orchestration tests: own pools, tag and automation scope")


def deploy(team: Team) -> str:
    return sh([sys.executable, "-m", "flows.deploy", "--root", str(team.origin)], team.origin,
              **team.server.env()).stdout


@pytest.fixture(scope="module")
def team(prefect_api, toy_project, tmp_path_factory) -> Team:
    """The toy project as the team's repository, deployed with `python -m flows.deploy`
    (its pools renamed: see the module docstring). team.deploy_output: what it printed."""
    base = tmp_path_factory.mktemp("team")
    team = Team(prefect_api, copy_tree(toy_project, base / "origin"), base)
    own_names(team.origin)
    team.deploy_output = deploy(team)
    return team


@pytest.fixture(scope="module")
def manual_run(team):
    """One run of the `manual` deployment with an override, executed by a real worker."""
    return team.run_once("manual", POOLS["cpu"], "manual run", overrides={"evaluate.repeats": 25})


@pytest.fixture(scope="module")
def killed_nightly(team):
    """A nightly run whose worker is SIGKILLed mid-training, with its whole process tree
    (a lost machine). Requested by the module's first test, so that the ~90 s until
    the crash automation fires overlaps the other tests; the last test checks it.
    (The toy trains 0.05 s an epoch: 2000 epochs outlast the kill by far.)"""
    run = team.trigger("nightly", overrides={"train.epochs": 2000}, targets=["train_baseline"])
    worker = team.start_worker(POOLS["gpu"], once=False)
    try:
        wait_for(run.id, lambda r: r.state.is_running(), 300, "nightly run start")
        workspace = team.workspace("nightly")
        deadline = time.monotonic() + 300
        while not list(workspace.glob(".slimline/resume/train_baseline-*/epoch-0001.pt")):
            assert time.monotonic() < deadline, "training never started"
            time.sleep(0.2)
        tree = [worker.pid, *descendants(worker.pid)]
    finally:
        kill_tree(worker)  # SIGKILL to the worker and every process under it
    deadline = time.monotonic() + 20
    while alive(tree):
        assert time.monotonic() < deadline, f"still running after SIGKILL: {alive(tree)}"
        time.sleep(0.2)
    state = client_call(lambda c: c.read_flow_run(run.id)).state
    return {"run": run, "still_running_after_kill": state.is_running()}


# --- deployments -----------------------------------------------------------------

def test_deploy_creates_pools_schedule_automation_and_is_idempotent(team, killed_nightly):
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    # the pools are the ones prefect.yaml names, this module's own: the first deploy made them
    assert f"work pools created: {list(POOLS.values())}" in team.deploy_output, team.deploy_output
    pools = {p.name: p.type for p in client_call(lambda c: c.read_work_pools())}
    assert pools.get(POOLS["cpu"]) == "process" and pools.get(POOLS["gpu"]) == "process"

    deps = client_call(lambda c: c.read_deployments(
        deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["nightly", "manual"]))))
    by_name = {d.name: d for d in deps}
    nightly = by_name["nightly"]
    assert nightly.work_pool_name == POOLS["gpu"] and by_name["manual"].work_pool_name == POOLS["cpu"]
    (sched,) = nightly.schedules
    assert sched.schedule.cron == "0 2 * * *" and sched.schedule.timezone == "Europe/Berlin"
    assert nightly.global_concurrency_limit.limit == 1
    assert nightly.concurrency_options.collision_strategy == "ENQUEUE"
    assert nightly.pull_steps[0]["flows.workspace.checkout"]["branch"] == "main"
    assert nightly.job_variables["env"]["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] == "30"
    # the server's own schedule logic puts the next runs at 02:00 Berlin time
    from prefect.server.schemas.schedules import CronSchedule

    dates = CronSchedule(cron=sched.schedule.cron, timezone=sched.schedule.timezone).get_dates(n=2)
    dates = asyncio.run(dates) if asyncio.iscoroutine(dates) else dates
    assert [(d.hour, d.minute, str(d.tzinfo)) for d in dates] == [(2, 0, "Europe/Berlin")] * 2
    assert sched.active

    autos = {a.name: a for a in client_call(lambda c: c.read_automations())}
    crash = autos["slimline-crash-unresponsive-runs"]
    assert crash.trigger.posture == "Proactive" and crash.trigger.within.total_seconds() == 90
    assert crash.actions[0].type == "change-flow-run-state" and crash.actions[0].state == "CRASHED"
    # Slimline's flows only (the file's own filter), and here this module's runs only
    flows, tag = crash.trigger.match_related
    assert set(flows.model_dump()["prefect.resource.name"]) == {"slimline-pipeline", "slimline-candidate"}
    assert tag.model_dump()["prefect.resource.id"] == f"prefect.tag.{TAG}"

    again = deploy(team)
    assert "work pools created: none" in again and "automations created: none" in again


def test_worker_runs_the_deployment_and_publishes_keyed_artifacts(team, manual_run):
    assert manual_run.state.is_completed(), manual_run.state.message
    found = artifacts(manual_run.id)
    keys = {"manual-prepare-report", "manual-train-baseline-report", "manual-evaluate-report",
            "manual-evaluate-metrics", "manual-regression-gate", "manual-pipeline-summary",
            "manual-evaluate-pareto", "manual-model-card"}
    assert keys <= set(found), keys - set(found)
    evaluate = found["manual-evaluate-report"].data
    assert "# evaluate: ran" in evaluate and "Commit `" in evaluate and "DVC md5" in evaluate
    assert "Changes against the last commit" in evaluate  # repeats changed: latencies moved
    # unchanged stages come back from the shared DVC cache instead of being recomputed
    logs = "\n".join(team.worker_logs(POOLS["cpu"])[0].read_text().splitlines()[-400:])
    assert "restored from run cache" in found["manual-prepare-report"].data, logs
    assert "passed" in found["manual-regression-gate"].data
    # no remote here: the charts travel inside the artifact
    assert "](data:image/png;base64," in found["manual-evaluate-pareto"].data
    card = found["manual-model-card"].data
    assert card.startswith("# Model card: `") and "## Lineage" in card and "## Limits" in card


def test_artifact_is_visible_through_the_rest_api(team, manual_run):
    body = json.dumps({"artifacts": {"key": {"any_": ["manual-evaluate-report"]}},
                       "sort": "CREATED_DESC", "limit": 1}).encode()
    req = urllib.request.Request(f"{team.server.url}/artifacts/filter", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        (latest,) = json.loads(resp.read())
    assert latest["flow_run_id"] == str(manual_run.id)
    assert "Selected" in latest["data"] or "No variant selected" in latest["data"]


def test_override_is_applied_and_recorded_as_a_dvc_experiment(team, manual_run):
    workspace = team.workspace("manual")
    shown = json.loads(dvc("exp", "show", "--json", cwd=workspace).stdout)
    exps = [e for row in shown for e in (row.get("experiments") or [])]
    names = {(x.get("name") or "") for e in exps for x in e.get("revs", [])}
    expected = f"manual-{manual_run.name}"
    assert expected in names, names
    rev = next(x for e in exps for x in e["revs"] if x.get("name") == expected)
    params = rev["data"]["params"]["params.yaml"]["data"]
    assert params["evaluate"]["repeats"] == 25
    # the experiment is a ref, never a commit on the tracked branch
    assert sh(["git", "rev-parse", "main"], workspace).stdout == sh(["git", "rev-parse", "main"],
                                                                    team.origin).stdout


def test_invalid_override_fails_at_once_naming_the_key(team):
    run = team.run_once("manual", POOLS["cpu"], "bad override run", overrides={"train.epochz": 3})
    assert run.state.is_failed()
    assert "train.epochz: unknown key" in run.state.message and "epochs" in run.state.message
    # nothing ran: no stage reports were published for it
    assert not any((k or "").endswith("-report") for k in artifacts(run.id))


def test_dashboard_shows_the_evaluate_report_in_a_browser(team, manual_run, tmp_path):
    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():
        if os.environ.get("CI"):
            pytest.fail("/usr/bin/chromium is missing: .ci/run installs Debian's chromium")
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    found = artifacts(manual_run.id)
    art, pareto = found["manual-evaluate-report"], found["manual-evaluate-pareto"]
    ui = team.server.url.removesuffix("/api")
    report = json.loads((team.workspace("manual") / "reports" / "evaluate.json").read_text())
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(chromium), headless=True,
                                     args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page()
            page.goto(f"{ui}/artifacts/artifact/{art.id}", wait_until="domcontentloaded", timeout=120_000)
            page.get_by_text("evaluate: ran").first.wait_for(timeout=120_000)
            if report.get("selected"):
                page.get_by_text(report["selected"]).first.wait_for(timeout=30_000)
            page.screenshot(path=str(tmp_path / "evaluate-artifact.png"), full_page=True)
            # the Pareto charts show without any remote: inline images that the page decodes
            page.goto(f"{ui}/artifacts/artifact/{pareto.id}", wait_until="domcontentloaded", timeout=120_000)
            img = page.locator("img[src^='data:image/png']").first
            img.wait_for(state="attached", timeout=60_000)
            page.wait_for_function("el => el.complete && el.naturalWidth > 0", arg=img.element_handle(),
                                   timeout=30_000)
            width = img.evaluate("el => el.naturalWidth")
        finally:
            browser.close()
    assert (tmp_path / "evaluate-artifact.png").stat().st_size > 10_000
    assert width == 770  # pareto_plot's 7 in at 110 dpi: the whole chart arrived


def test_two_triggers_run_one_after_the_other(team):
    # one stage each (up to date in the workspace by now), and no `dvc exp save` (~4 CPU-s
    # each; manual_run checks it): what is checked is the deployment's single slot
    first, second = (team.trigger("manual", targets=["prepare"], save_experiment=False) for _ in range(2))
    worker = team.start_worker(POOLS["cpu"], once=False)
    try:
        runs = [wait_for(r.id, finished, 600, "queued run") for r in (first, second)]
    finally:
        kill_tree(worker)
    assert all(r.state.is_completed() for r in runs), [r.state.message for r in runs]
    # the later one waited for the deployment's single slot instead of racing the first
    waited = [r for r in runs if "AwaitingConcurrencySlot" in state_names(r.id)]
    assert waited, [state_names(r.id) for r in runs]
    a, b = sorted(runs, key=lambda r: r.start_time)
    assert b.start_time >= a.end_time


def test_killed_worker_run_is_crashed_by_the_automation_and_frees_the_slot(team, killed_nightly,
                                                                          manual_run):
    run = killed_nightly["run"]
    assert killed_nightly["still_running_after_kill"]  # nobody had told the server
    # heartbeats every 30 s; the automation fires after 90 s without one (the wait
    # mostly overlapped the tests above: the fixture killed the worker before them)
    crashed = wait_for(run.id, lambda r: r.state.is_crashed(), 240, "killed run")
    assert "No heartbeat" in crashed.state.message
    # the deployment's single slot is free again: the next trigger runs to completion
    rerun = team.run_once("nightly", POOLS["gpu"], "rerun", targets=["train_baseline"], save_experiment=False)
    assert rerun.state.is_completed(), rerun.state.message
    # runs that finished long ago were left alone by the automation
    assert client_call(lambda c: c.read_flow_run(manual_run.id)).state.is_completed()
