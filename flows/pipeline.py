"""The pipeline flow: run dvc.yaml's stages, in DVC's order, as Prefect tasks.

    python -m flows.pipeline [--targets STAGE ...] [--force] [-S key=value ...] [--[no-]push]

The stage list comes from DVC's own graph; nothing here copies it. The status
of each stage is read in process (cheap); only stages that changed get a
`dvc repro --single-item` subprocess, so dvc.lock stays true and DVC alone
decides what is up to date. Each stage's output streams into the run log and
its report is published as artifacts.

Around the stages: one run per workspace at a time (a Prefect global
concurrency limit), overrides checked by the params schema, the regression
gate (flows/gate.py), and, for deployment runs, the result saved as a DVC
experiment and pushed when a remote is configured (flows/remote.py).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.errors import RegressionFailed, StageFailed, TransientFailure, retry_transient
from flows.gate import regression_gate
from flows.overrides import apply as apply_overrides
from flows.overrides import validate as validate_overrides
from slimline.overrides import parse_set_args
from flows.remote import Remote, push_outputs, remote_for, save_run, stage_env, upload_evaluate
from flows.reports import (Progress, publish_gate, publish_evaluate, publish_sensitivity, publish_skipped,
                           publish_stage, publish_summary)
from flows.workspace import workspace_slot
from slimline.s3 import LOCKED, explain_dvc_failure, is_transient
from slimline.params import load_params
from slimline.repo import stop_group

ROOT = Path(__file__).resolve().parent.parent
SKIPPED = "skipped (up to date)"  # a stage DVC calls up to date: not run, no task run
RUN_CACHE_LINE = "is cached - skipping run"  # dvc's words when it restores from the run cache
SKIP_LINE = "didn't change, skipping"  # ... and when --allow-missing skips a stage
# prctl(PR_SET_PDEATHSIG=1, SIGKILL) as in slimline.stage.die_with_parent, inline so the
# guard costs no imports; the setting survives the exec into dvc.
GUARD = ("import ctypes, os, signal, sys\n"
         "if sys.platform.startswith('linux'): ctypes.CDLL(None).prctl(1, signal.SIGKILL)\n"
         "os.execv(sys.executable, [sys.executable, '-m', 'dvc', *sys.argv[1:]])")


def stage_name(repo, stage) -> str:
    """`name` for stages in the root dvc.yaml, `sub/dvc.yaml:name` for nested ones
    (DVC's own `addressing` is relative to the cwd, which the flow does not change)."""
    rel = os.path.relpath(stage.dvcfile.path, repo.root_dir)
    return stage.name if rel == "dvc.yaml" else f"{rel}:{stage.name}"


def stage_order(repo, targets: list[str] | None = None) -> list[str]:
    """Pipeline stages in dependency order, from DVC's graph (deps before dependents)."""
    import networkx as nx

    graph = repo.index.graph  # edges point from a stage to the stages it depends on
    # `.dvc` data sources have no command to run; DVC checks them as deps of the stages.
    by_name = {stage_name(repo, s): s for s in graph.nodes if getattr(s, "cmd", None)}
    wanted = set(by_name)
    if targets:
        unknown = [t for t in targets if t not in by_name]
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}; dvc.yaml defines {sorted(by_name)}")
        wanted = set(targets)
        for t in targets:
            wanted |= {stage_name(repo, s) for s in nx.descendants(graph, by_name[t])}
    order = nx.lexicographical_topological_sort(graph.reverse(), key=lambda s: stage_name(repo, s))
    return [name for name in map(lambda s: stage_name(repo, s), order) if name in wanted and name in by_name]


def abs_target(root, name: str) -> str:
    """A stage target that DVC resolves the same from any working directory."""
    path, _, stage = name.rpartition(":")
    return f"{os.path.join(str(root), path or 'dvc.yaml')}:{stage}"


def pipeline_up_to_date(repo) -> bool:
    from dvc.lock import LockError

    try:
        return not repo.status()
    except LockError:
        return False


def is_up_to_date(repo, name: str) -> bool:
    """DVC's own status check, in process (no 1 s subprocess per stage). With DVC's lock
    held by another process, say "not known to be up to date": the stage's own `dvc repro`
    then meets the lock, and the task's retry waits for it."""
    from dvc.lock import LockError

    try:
        return not repo.status(targets=[abs_target(repo.root_dir, name)])
    except LockError:
        return False


def _kill_group(proc: subprocess.Popen, stage: str, logger) -> None:
    """Stop a still-running stage and everything it started (dvc runs the stage's
    command in a child of its own), and wait until the whole group is gone."""
    if proc.poll() is None:
        logger.warning("%s: stopping the stage (process group %d)", stage, proc.pid)
        stop_group(proc)


def uncached_outs(repo, name: str) -> list[str]:
    """The stage's `cache: false` outputs (reports, plots): DVC deletes them before a
    run like any output, but cannot check them out again afterwards."""
    stage = repo.stage.collect(abs_target(repo.root_dir, name))[0]
    return [o.fs_path for o in stage.outs if not o.use_cache]


def _snapshot(paths: list[str], into: Path) -> dict[str, Path]:
    saved = {}
    for i, p in enumerate(map(Path, paths)):
        if p.exists():
            dst = into / str(i)
            (shutil.copytree if p.is_dir() else shutil.copy2)(p, dst)
            saved[str(p)] = dst
    return saved


def _restore_outputs(root: Path, stage: str, saved: dict[str, Path], logger) -> None:
    """After a failed stage, put back what DVC deleted before running it: cached
    outputs from the DVC cache (byte for byte what dvc.lock records), the rest
    from the snapshot taken just before the run."""
    from dvc.repo import Repo

    for path, copy in saved.items():
        shutil.rmtree(path, ignore_errors=True) if Path(path).is_dir() else Path(path).unlink(missing_ok=True)
        (shutil.copytree if copy.is_dir() else shutil.copy2)(copy, path)
    try:
        with Repo(str(root)) as repo:
            repo.checkout(targets=[abs_target(root, stage)], force=True)
        logger.info("%s: restored the previous outputs (DVC cache, and %d uncached)", stage, len(saved))
    except Exception as err:  # nothing recorded yet (first run) is not an error
        logger.info("%s: no previous cached outputs to restore (%s)", stage, err)


def _failure_text(stage: str, rc: int, lines: list[str], remote: Remote | None) -> str:
    # The stage's own message starts at its first ERROR line and may span several.
    first = next((i for i, l in enumerate(lines) if l.startswith("ERROR")), len(lines) - 10)
    errors = lines[max(first, 0):]
    hint = explain_dvc_failure("\n".join(lines), remote.url, remote.name) if remote else None
    return f"stage '{stage}' failed (exit {rc}):\n" + "\n".join(([hint] if hint else []) + errors)


# NO_CACHE: DVC alone decides what is up to date. Retries only for transient
# failures (DVC lock busy, remote unreachable): 3 attempts, waiting 5 s then
# 20 s, so an outage costs 25 s of waiting on top of the bounded S3 retries
# (slimline/s3.py bounded_env). A failing stage (bad data, bad params) fails the
# same way again, so retry_transient never retries it.
@task(task_run_name="{stage}", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[5, 20],
      retry_condition_fn=retry_transient)
def run_stage(root: str, stage: str, force: bool, key_prefix: str, uncached: list[str] | None = None,
              remote: Remote | None = None, no_run_cache: bool = False) -> dict:
    logger = get_run_logger()
    root_path = Path(root)
    start = time.perf_counter()
    # With a remote, fetch only what this stage needs; a stage whose only change is
    # outputs that live on the remote is skipped rather than rerun (or fully pulled).
    pull = ["--pull", "--allow-missing"] if remote else []
    dvc_args = ["repro", "--single-item", stage, *pull, *(["--force"] if force else []),
                *(["--no-run-cache"] if no_run_cache else [])]
    # dvc dies with this process (GUARD), and the stage with dvc: a SIGKILLed
    # worker leaves no orphan training that would hold DVC's lock.
    cmd = [sys.executable, "-c", GUARD, *dvc_args]
    logger.info("%s: running `dvc %s`", stage, " ".join(dvc_args))
    tail: deque[str] = deque(maxlen=40)
    outcome = "ran"
    progress = Progress(key_prefix, stage)
    snapshot_dir = Path(tempfile.mkdtemp(prefix=f"slimline-{stage.replace('@', '_')}-"))
    saved = _snapshot(uncached or [], snapshot_dir)
    # Own process group, so cancelling the flow can stop the stage and its children.
    proc = subprocess.Popen(cmd, cwd=root, env=stage_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1, start_new_session=True)
    try:
        for line in proc.stdout:
            line = line.rstrip()
            tail.append(line)
            if RUN_CACHE_LINE in line:
                outcome = "restored from run cache"
            elif SKIP_LINE in line and remote:
                outcome = "skipped (up to date; outputs on the remote)"
            progress.update(line)
            (logger.error if line.startswith("ERROR") else logger.info)("[%s] %s", stage, line)
        rc = proc.wait()
    except BaseException:  # cancelled or interrupted: the rerun resumes; drop the snapshot
        shutil.rmtree(snapshot_dir, ignore_errors=True)
        raise
    finally:
        _kill_group(proc, stage, logger)  # no-op when it finished; on cancel/interrupt, stops it
    seconds = time.perf_counter() - start
    # dvc that could not take the lock touched nothing; the lock holder owns the outputs now
    if rc != 0 and not any(LOCKED in line for line in tail):
        _restore_outputs(root_path, stage, saved, logger)
    shutil.rmtree(snapshot_dir, ignore_errors=True)
    if rc != 0:
        message = _failure_text(stage, rc, list(tail), remote)
        transient = is_transient("\n".join(tail))  # DVC lock busy, remote unreachable
        publish_stage(root_path, stage, f"failed (exit {rc})" + (", will retry" if transient else ""),
                      seconds, key_prefix, message.splitlines()[1:])
        raise (TransientFailure if transient else StageFailed)(message)
    publish_stage(root_path, stage, outcome, seconds, key_prefix)
    return {"stage": stage, "outcome": outcome, "seconds": round(seconds, 2)}


def _default_prefix() -> str:
    # Artifact keys are global: a deployment's runs keep their own history
    # ("nightly-evaluate-report"), and runs outside any deployment use "local".
    from prefect.runtime import deployment

    return deployment.name or "local"


@flow(name="slimline-pipeline", log_prints=True)
def pipeline(targets: list[str] | None = None, force: bool = False, push: bool | None = None,
             overrides: dict | None = None, root: str | None = None,
             key_prefix: str | None = None, save_experiment: bool | None = None,
             no_run_cache: bool = False) -> list[dict]:
    """Reproduce the DVC pipeline (or `targets` and what they depend on).

    overrides: params keys to change for this run, e.g. {"train.epochs": 3}
      (validated first, applied like `dvc exp run -S`, recorded in the experiment).
    push: push outputs (and the experiment) at the end; None pushes when a DVC remote
      is configured. save_experiment: record the run with `dvc exp save`; None does
      it for deployment runs.
    """
    logger = get_run_logger()
    root_path = Path(root or ROOT).resolve()
    prefix = key_prefix if key_prefix is not None else _default_prefix()
    # Bad overrides fail here, naming the key, before the workspace is touched.
    validate_overrides(root_path, overrides or {})
    results: list[dict] = []
    with workspace_slot(root_path, logger):
        try:
            set_args = apply_overrides(root_path, overrides or {})
            if set_args:
                logger.info("params.yaml overrides (as `dvc exp run -S`): %s", " ".join(set_args))
            remote = remote_for(root_path, logger)
            run_stages(root_path, targets, force, prefix, remote, results, no_run_cache)
            finalize(root_path, prefix, remote, push, save_experiment, results)
        finally:
            publish_summary(root_path, results, prefix)  # failed runs get their summary too
    return results


def finalize(root_path: Path, prefix: str, remote: Remote | None, push: bool | None,
             save_experiment: bool | None, results: list[dict]) -> list[dict]:
    """After the stages: publish the sensitivity report and the Pareto charts, save the run as a DVC experiment,
    pass the regression gate, push. Appends each step's outcome to `results` (a failed
    gate's summary still lists them) and returns them."""
    from prefect.runtime import deployment

    logger = get_run_logger()
    start = len(results)
    if any(r["stage"] == "quantize" and r["outcome"] != SKIPPED and not r["outcome"].startswith("failed")
           for r in results):  # never a stale report
        publish_sensitivity(root_path, prefix)
    if any(r["stage"] == "evaluate" and r["outcome"] != SKIPPED for r in results):
        # charts and model card; push=False: nothing goes to the remote, the report links neither
        publish_evaluate(root_path, prefix,
                       upload_evaluate(root_path, remote, logger) if push is not False else None)
    experiment = None
    if save_experiment if save_experiment is not None else bool(deployment.id):
        present = [r["stage"] for r in results if "outputs on the remote" not in r["outcome"]]
        if present:  # with no targets, `dvc exp save` would cache every stage's outputs
            results.append(save_run(root_path, prefix, present))
            experiment = results[-1]["experiment"]
        else:
            logger.info("every stage's outputs are on the remote already: no experiment to save")
    gate = regression_gate(root_path, load_params(root_path / "params.yaml").gate)
    publish_gate(gate, prefix)
    if not gate.ok:  # saved above for inspection, but neither pushed nor passed
        raise RegressionFailed(gate.message)
    logger.info(gate.message)
    if remote is None:
        logger.info("no DVC remote configured: nothing pushed; outputs stay in this "
                    "machine's DVC cache")
    elif push is False:
        logger.info("push=False: outputs not pushed to DVC remote '%s'", remote.name)
    else:
        results.append(push_outputs(str(root_path), remote, experiment))
    return results[start:]


def run_stages(root_path: Path, targets, force: bool, prefix: str, remote, results: list[dict],
               no_run_cache: bool = False) -> None:
    """Run the stages in DVC's order, appending each outcome to `results` (so a
    failed run's summary still lists what ran before the failure)."""
    from dvc.repo import Repo

    logger = get_run_logger()
    repo = Repo(str(root_path))
    try:
        order = stage_order(repo, targets)
        logger.info("stages, in DVC's order: %s", ", ".join(order))
        # One status pass over the whole graph (0.6 s here) settles the common "nothing
        # changed" case; otherwise each stage is checked when its turn comes.
        all_clean = pipeline_up_to_date(repo)
        skipped: list[str] = []  # up to date: no task run; their artifacts go out together
        try:
            for stage in order:
                if not force and (all_clean or is_up_to_date(repo, stage)):
                    logger.info("%s: up to date, skipped", stage)
                    skipped.append(stage)
                    results.append({"stage": stage, "outcome": SKIPPED, "seconds": 0.0})
                    continue
                try:
                    result = run_stage(str(root_path), stage, force, prefix, uncached_outs(repo, stage),
                                       remote, no_run_cache)
                except StageFailed:
                    results.append({"stage": stage, "outcome": "failed", "seconds": 0.0})
                    raise
                results.append(result)
                repo.close()  # dvc.lock changed under us: read the graph state afresh
                repo = Repo(str(root_path))
        finally:
            publish_skipped(root_path, skipped, SKIPPED, prefix)
    finally:
        repo.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flows.pipeline", description=__doc__.split("\n")[0])
    p.add_argument("--targets", nargs="*", help="stages to reproduce (default: all)")
    p.add_argument("--force", action="store_true", help="rerun stages even if up to date")
    p.add_argument("--root", default=None, help="project root (default: this checkout)")
    p.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a params.yaml key for this run, as `dvc exp run -S`")
    p.add_argument("--push", action=argparse.BooleanOptionalAction, default=None,
                   help="push outputs to the DVC remote at the end (default: when one is configured)")
    p.add_argument("--save-experiment", action="store_true", help="record the run with `dvc exp save`")
    p.add_argument("--no-run-cache", action="store_true", help="never restore stages from DVC's run cache")
    args = p.parse_args(argv)
    from slimline.check import declare_files
    from slimline.codedeps import read_params
    from slimline.overrides import OverrideError, apply_to
    from slimline.project import find_root

    root = Path(args.root).resolve() if args.root else (find_root() or ROOT)
    # Run by hand: add what params.yaml brings to dvc.yaml first, as `slimline check
    # --write-deps` does. A deployment's run calls pipeline() directly and refuses instead.
    overrides = parse_set_args(args.set)
    raw = read_params(root / "params.yaml")
    try:
        raw = apply_to(raw, overrides)
    except OverrideError:
        pass  # pipeline() below names the bad key; declare what params.yaml itself brings
    for line in declare_files(raw, root):
        print(line)
    try:
        results = pipeline(targets=args.targets or None, force=args.force, root=str(root),
                           overrides=overrides, push=args.push,
                           save_experiment=args.save_experiment or None, no_run_cache=args.no_run_cache)
    except Exception as err:
        print(f"\npipeline failed: {err}", file=sys.stderr)
        return 1
    from flows.reports import print_summary

    print_summary(root, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
