"""Structure search: each candidate of params.yaml's `search` section is trained as
a DVC experiment, fanned out through Prefect, and ranked on a leaderboard.

    python -m flows.search [--workers K] [--pool] [--retry-failed] [--apply-best] [--root DIR]

Local (default): K candidates at a time on this machine, each a Prefect task
running `dvc exp run --temp` with train.num_threads = cores // K.
Pool (--pool): one run of the `candidate` deployment (prefect.yaml) per
candidate on the `gpu` work pool; that deployment's concurrency limit, the
number of workers, decides how many run at once. Each candidate publishes its
record as an artifact, which the search reads back through the Prefect API.

A rerun skips the candidates that already have an experiment of this commit
(and, unless --retry-failed, those recorded as failed). The leaderboard goes to
reports/search.md and the artifacts `search-leaderboard` / `search-report`.
--apply-best then writes the recommended structure's keys into params.yaml and
prints the diff.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from slimline.io import write_text
from slimline.params import ParamsError, parse_params
from slimline.repo import git, head
from slimline.search.board import leaderboard, markdown, table_rows
from slimline.search.runs import (
    METRIC_KEYS,
    base_record,
    code_state,
    known,
    push_experiment,
    run_experiment,
    shared_stages_ready,
)
from slimline.search.space import Candidate, apply_structure, artifact_key, build_candidates

ROOT = Path(__file__).resolve().parent.parent
DEPLOYMENT = "slimline-candidate/candidate"
# What a candidate's artifact carries back to the search (the search knows the rest).
RESULT_KEYS = ("status", "reason", "experiment", "baseline", *METRIC_KEYS, "train_seconds",
               "ort_p50_ms_b1", "wall_seconds", "pushed")


class CandidateFailed(RuntimeError):
    """A candidate that failed; carries its record so the search can still rank the rest."""

    def __init__(self, reason: str, record: dict):
        super().__init__(reason, record)  # both in args: survives pickling between processes
        self.record = record

    def __str__(self) -> str:
        return str(self.args[0])

    def __repr__(self) -> str:
        return f"CandidateFailed({self.args[0]!r})"


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def split_threads(workers: int, n_cores: int) -> tuple[int, int]:
    """(candidates at a time, torch threads each) with workers x threads <= cores."""
    k = max(1, min(workers, n_cores))
    return k, max(1, n_cores // k)


def _log_line(logger):
    """Experiment output into the run log; DVC's and the stage's ERROR lines as errors."""
    def log(line: str) -> None:
        own = line.split("] ", 1)[-1]  # lines come as "[candidate] <output>"
        (logger.error if own.startswith("ERROR") else logger.info)("%s", line)

    return log


# NO_CACHE and no retries: whether a candidate already ran is DVC's record (its
# experiment), and a failing candidate fails the same way again.
@task(task_run_name="{candidate[name]}", cache_policy=NO_CACHE, retries=0)
def run_candidate(root: str, candidate: dict, threads: int | None) -> dict:
    record = run_experiment(Path(root), Candidate(**candidate), threads, log=_log_line(get_run_logger()))
    if record["status"] != "ok":
        raise CandidateFailed(record["reason"], record)
    return record


def run_local(root: Path, todo: list[Candidate], workers: int, raw: dict, logger) -> dict[str, dict]:
    k, threads = split_threads(workers, cores())
    if k < workers:
        logger.warning("%d workers asked, %d cores: running %d at a time", workers, cores(), k)
    logger.info("local: %d candidate(s), %d at a time, %d torch thread(s) each", len(todo), k, threads)
    out: dict[str, dict] = {}
    waves = [todo]
    if k > 1 and len(todo) > 1 and not shared_stages_ready(root, todo[0], threads, raw):
        logger.info("%s runs alone first: it reproduces the stages before %s, which the others "
                    "then restore from DVC's run cache", todo[0].name, todo[0].stage)
        waves = [todo[:1], todo[1:]]
    with ThreadPoolTaskRunner(max_workers=k) as runner:
        for wave in waves:
            futures = {c.name: runner.submit(run_candidate, {"root": str(root), "candidate": c.asdict(),
                                                             "threads": threads}) for c in wave}
            for c in wave:
                try:
                    out[c.name] = futures[c.name].result()
                except CandidateFailed as err:
                    out[c.name] = err.record
                except Exception as err:  # noqa: BLE001 - a crash outside the experiment: still only this candidate
                    out[c.name] = {**base_record(c), "reason": f"{type(err).__name__}: {err}"}
    return out


def _read_result(client, flow_run_id, name: str) -> dict | None:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    arts = client.read_artifacts(artifact_filter=ArtifactFilter(
        flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    for a in arts:
        if a.key == artifact_key(name):
            data = json.loads(a.data) if isinstance(a.data, str) else a.data
            return data[0]
    return None


def run_pool(todo: list[Candidate], baseline: str, deployment: str, timeout_s: float | None,
             logger) -> dict[str, dict]:
    """One deployment run per candidate; the workers take them as the deployment's
    concurrency limit allows. Results come back as each run's artifact."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    runs = {}
    out: dict[str, dict] = {}
    for c in todo:
        if c.error:  # the schema rejected it: no worker needed to say so
            out[c.name] = {**base_record(c), "reason": c.error}
            continue
        try:
            fr = run_deployment(deployment, parameters={"candidate": c.asdict(), "commit": baseline},
                                flow_run_name=c.name, timeout=0)
        except ObjectNotFound:
            raise RuntimeError(f"no deployment {deployment} on the Prefect server: deploy "
                               f"prefect.yaml first (make deploy)") from None
        runs[c.name] = fr.id
        logger.info("pool: %s -> flow run %s", c.name, fr.id)
    by_name = {c.name: c for c in todo}
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        pending = dict(runs)
        while pending:
            for name, run_id in list(pending.items()):
                run = client.read_flow_run(run_id)
                if not run.state.is_final():
                    continue
                del pending[name]
                result = _read_result(client, run_id, name)
                if result is None:  # crashed or cancelled before publishing its result
                    result = {"status": "failed",
                              "reason": f"flow run {run.state.name}: {run.state.message or 'no result'}"}
                out[name] = {**base_record(by_name[name]), **result, "source": "ran"}
                logger.info("pool: %s %s", name, out[name]["status"])
            if pending and deadline is not None and time.monotonic() > deadline:
                for name in pending:
                    out[name] = {**base_record(by_name[name]),
                                 "reason": f"no result within {timeout_s:.0f} s (is a worker polling "
                                           f"the deployment's pool?)"}
                break
            time.sleep(1 if pending else 0)
    return out


def pool_known(candidates: list[Candidate], baseline: str) -> dict[str, dict]:
    """Candidates a pool run finished earlier for this commit, from their latest artifact
    (workers without a git remote cannot send their experiment back)."""
    from prefect.artifacts import Artifact

    out = {}
    for c in candidates:
        art = Artifact.get(artifact_key(c.name))
        if art is None:
            continue
        row = (json.loads(art.data) if isinstance(art.data, str) else art.data)[0]
        if row.get("status") == "ok" and row.get("baseline") == baseline:
            out[c.name] = {**base_record(c), **row, "source": "reused"}
    return out


def check_committed(root: Path, raw: dict) -> None:
    """Workers run candidates from the commit, so pool mode refuses uncommitted changes
    that would shape the results: code, the stage graph, params outside `search`."""
    if code_state(root):
        raise RuntimeError("pool mode: workers run the committed code; commit (and push) the "
                           "changes to tasks/, slimline/ and dvc.yaml first")
    committed = yaml.safe_load(git("show", "HEAD:params.yaml", cwd=root)) or {}
    changed = sorted(k for k in set(raw) | set(committed)
                     if k != "search" and raw.get(k) != committed.get(k))
    if changed:
        raise RuntimeError(f"pool mode: workers use the committed params.yaml, but sections "
                           f"{changed} differ from it; commit (and push) them first")


def publish(root: Path, board: dict, cfg, logger) -> str:
    md = markdown(board, cfg)
    write_text(root / "reports" / "search.md", md)
    create_markdown_artifact(key="search-report", markdown=md, description="structure search")
    create_table_artifact(key="search-leaderboard", table=table_rows(board),
                          description=f"structure search: recommended {board['recommended']}")
    logger.info("leaderboard: %s (recommended: %s)", root / "reports" / "search.md", board["recommended"])
    return md


@flow(name="slimline-search", log_prints=True)
def search(root: str | None = None, workers: int | None = None, pool: bool = False,
           retry_failed: bool = False, deployment: str = DEPLOYMENT,
           timeout_s: float | None = None) -> dict:
    """Run every candidate not run yet, then rank them all. Returns
    {"board", "records", "target"}."""
    logger = get_run_logger()
    root_path = Path(root or ROOT).resolve()
    raw = yaml.safe_load((root_path / "params.yaml").read_text())
    params = parse_params(raw, str(root_path / "params.yaml"))
    cfg = params.search
    baseline = head(root_path)
    if pool:
        check_committed(root_path, raw)
    candidates = build_candidates(raw, code_state(root_path))
    done = known(root_path, candidates, baseline, retry_failed)
    if pool:  # a worker's artifact also has the timings, which its pushed experiment lacks
        done.update({k: v for k, v in pool_known(candidates, baseline).items()
                     if k not in done or done[k]["ort_p50_ms_b1"] is None})
    todo = [c for c in candidates if c.name not in done]
    logger.info("%d candidate(s) for %s: %d done before, %d to run", len(candidates), cfg.target,
                len(done), len(todo))
    if pool:
        fresh = run_pool(todo, baseline, deployment, timeout_s, logger)
    else:
        fresh = run_local(root_path, todo, workers or cfg.workers, raw, logger)
    records = [done.get(c.name) or fresh[c.name] for c in candidates]
    current = getattr(params, cfg.target).model_dump(mode="json")
    board = leaderboard(records, cfg, current=current)
    publish(root_path, board, cfg, logger)
    return {"board": board, "records": records, "target": cfg.target}


@flow(name="slimline-candidate", log_prints=True)
def candidate(candidate: dict, commit: str | None = None, threads: int | None = None,
              push: bool = True, root: str | None = None) -> dict:
    """One candidate on a worker (deployment `candidate`): run its experiment in the
    worker's checkout, push it when remotes are configured, publish its record."""
    logger = get_run_logger()
    root_path = Path(root or ROOT).resolve()
    c = Candidate(**candidate)
    at = head(root_path)
    if commit and at != commit:
        record = {**base_record(c), "reason": f"this worker's checkout is at {at[:10]}, the search "
                                              f"ran at {commit[:10]}: push that commit to the branch "
                                              f"the workers track"}
    else:
        record = run_experiment(root_path, c, threads, log=_log_line(logger))
    record["baseline"] = at
    if record["status"] == "ok" and push:
        try:
            record["pushed"] = push_experiment(root_path, c.name)
        except RuntimeError as err:  # the result stands; only sharing it failed
            record["pushed"] = str(err)
            logger.warning("%s", err)
    create_table_artifact(key=artifact_key(c.name), table=[{k: record.get(k) for k in RESULT_KEYS}],
                          description=f"structure search candidate {c.name}: {record['status']}")
    if record["status"] != "ok":
        raise CandidateFailed(record["reason"], record)
    return record


def apply_best(root: Path, result: dict) -> str:
    board = result["board"]
    best = next((r for r in board["rows"] if r["name"] == board["recommended"]), None)
    if best is None:
        raise ValueError("no candidate is recommended (see reports/search.md): nothing to apply")
    return apply_structure(root / "params.yaml", result["target"], best["choice"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flows.search", description=__doc__.split("\n")[0])
    p.add_argument("--root", default=None, help="project root (default: this checkout)")
    p.add_argument("--workers", type=int, default=None, help="local: candidates at a time "
                   "(default: search.workers)")
    p.add_argument("--pool", action="store_true", help="run candidates on the `candidate` deployment")
    p.add_argument("--deployment", default=DEPLOYMENT, help=f"pool: deployment (default {DEPLOYMENT})")
    p.add_argument("--timeout", type=float, default=None, help="pool: give up waiting after this many s")
    p.add_argument("--retry-failed", action="store_true", help="rerun candidates recorded as failed")
    p.add_argument("--apply-best", action="store_true",
                   help="write the recommended structure into params.yaml and show the diff")
    args = p.parse_args(argv)
    root = Path(args.root or ROOT).resolve()
    try:
        result = search(root=str(root), workers=args.workers, pool=args.pool,
                        retry_failed=args.retry_failed, deployment=args.deployment,
                        timeout_s=args.timeout)
    except (ParamsError, RuntimeError) as err:
        print(f"\nsearch failed: {err}", file=sys.stderr)
        return 1
    print("\n" + (root / "reports" / "search.md").read_text())
    if args.apply_best:
        try:
            diff = apply_best(root, result)
        except ValueError as err:
            print(f"--apply-best: {err}", file=sys.stderr)
            return 1
        print(diff or "params.yaml already holds the recommended structure.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
