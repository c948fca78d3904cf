"""The pipeline flow: run dvc.yaml's stages, in DVC's order, as Prefect tasks.

    python -m flows.pipeline [--targets STAGE ...] [--force] [--root DIR]

The stage list comes from DVC's own graph; nothing here copies it. The status
of each stage is read in process (cheap); only stages that changed get a
`dvc repro --single-item` subprocess, so dvc.lock stays true and DVC alone
decides what is up to date. Each stage's output streams into the run log and
its report is published as artifacts.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.reports import publish_stage, publish_summary

ROOT = Path(__file__).resolve().parent.parent
RUN_CACHE_LINE = "is cached - skipping run"  # dvc's words when it restores from the run cache


class StageFailed(RuntimeError):
    pass


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


def is_up_to_date(repo, name: str) -> bool:
    """DVC's own status check, in process (no 1 s subprocess per stage)."""
    return not repo.status(targets=[abs_target(repo.root_dir, name)])


def _stage_env() -> dict:
    env = dict(os.environ)
    # The flow's own interpreter first on PATH, so a worker's venv runs the stages.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONUNBUFFERED"] = "1"  # line-by-line logs, not 4 KB blocks at exit
    env["TQDM_DISABLE"] = "1"  # no progress bars in logs
    env["DVC_NO_ANALYTICS"] = "1"
    return env


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_group(proc: subprocess.Popen, stage: str, logger) -> None:
    """Stop a still-running stage and everything it started (dvc runs the stage's
    command in a child of its own), and wait until the whole group is gone."""
    if proc.poll() is not None:
        return
    logger.warning("%s: stopping the stage (process group %d)", stage, proc.pid)
    for sig, grace_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            proc.poll()  # reap our direct child so it does not linger as a zombie
            if not _group_alive(proc.pid):
                return
            time.sleep(0.05)


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


# NO_CACHE: DVC alone decides what is up to date; retries=0: a failing stage
# (bad data, bad params) fails the same way again, so retrying only wastes time.
@task(task_run_name="{stage}", cache_policy=NO_CACHE, retries=0)
def run_stage(root: str, stage: str, up_to_date: bool, force: bool, key_prefix: str,
              uncached: list[str] | None = None) -> dict:
    logger = get_run_logger()
    root_path = Path(root)
    start = time.perf_counter()
    if up_to_date and not force:
        logger.info("%s: up to date, skipped", stage)
        publish_stage(root_path, stage, "skipped (up to date)", 0.0, key_prefix)
        return {"stage": stage, "outcome": "skipped (up to date)", "seconds": 0.0}

    cmd = [sys.executable, "-m", "dvc", "repro", "--single-item", stage, *(["--force"] if force else [])]
    logger.info("%s: running `%s`", stage, " ".join(cmd[2:]))
    tail: deque[str] = deque(maxlen=40)
    outcome = "ran"
    snapshot_dir = Path(tempfile.mkdtemp(prefix=f"slimline-{stage.replace('@', '_')}-"))
    saved = _snapshot(uncached or [], snapshot_dir)
    # Own process group, so cancelling the flow can stop the stage and its children.
    proc = subprocess.Popen(cmd, cwd=root, env=_stage_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1, start_new_session=True)
    try:
        for line in proc.stdout:
            line = line.rstrip()
            tail.append(line)
            if RUN_CACHE_LINE in line:
                outcome = "restored from run cache"
            (logger.error if line.startswith("ERROR") else logger.info)("[%s] %s", stage, line)
        rc = proc.wait()
    except BaseException:  # cancelled or interrupted: the rerun resumes; drop the snapshot
        shutil.rmtree(snapshot_dir, ignore_errors=True)
        raise
    finally:
        _kill_group(proc, stage, logger)  # no-op when it finished; on cancel/interrupt, stops it
    seconds = time.perf_counter() - start
    if rc != 0:
        _restore_outputs(root_path, stage, saved, logger)
    shutil.rmtree(snapshot_dir, ignore_errors=True)
    if rc != 0:
        # The stage's own message starts at its first ERROR line and may span several.
        lines = list(tail)
        first = next((i for i, l in enumerate(lines) if l.startswith("ERROR")), len(lines) - 10)
        errors = lines[max(first, 0):]
        publish_stage(root_path, stage, f"failed (exit {rc})", seconds, key_prefix, errors)
        raise StageFailed(f"stage '{stage}' failed (exit {rc}):\n" + "\n".join(errors))
    publish_stage(root_path, stage, outcome, seconds, key_prefix)
    return {"stage": stage, "outcome": outcome, "seconds": round(seconds, 2)}


@flow(name="slimline-pipeline", log_prints=True)
def pipeline(targets: list[str] | None = None, force: bool = False, root: str | None = None,
             key_prefix: str = "") -> list[dict]:
    """Reproduce the DVC pipeline (or `targets` and what they depend on)."""
    from dvc.repo import Repo

    logger = get_run_logger()
    root_path = Path(root or ROOT).resolve()
    repo = Repo(str(root_path))
    results: list[dict] = []
    try:
        order = stage_order(repo, targets)
        logger.info("stages, in DVC's order: %s", ", ".join(order))
        for stage in order:
            up_to_date = is_up_to_date(repo, stage)
            try:
                result = run_stage(str(root_path), stage, up_to_date, force, key_prefix,
                                   uncached_outs(repo, stage))
            except StageFailed:
                results.append({"stage": stage, "outcome": "failed", "seconds": 0.0})
                raise
            results.append(result)
            if result["outcome"] != "skipped (up to date)":
                repo.close()  # dvc.lock changed under us: read the graph state afresh
                repo = Repo(str(root_path))
    finally:
        repo.close()
        publish_summary(root_path, results, key_prefix)  # failed runs get their summary too
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flows.pipeline", description=__doc__.split("\n")[0])
    p.add_argument("--targets", nargs="*", help="stages to reproduce (default: all)")
    p.add_argument("--force", action="store_true", help="rerun stages even if up to date")
    p.add_argument("--root", default=None, help="project root (default: this checkout)")
    args = p.parse_args(argv)
    try:
        results = pipeline(targets=args.targets or None, force=args.force, root=args.root)
    except Exception as err:
        print(f"\npipeline failed: {err}", file=sys.stderr)
        return 1
    from flows.reports import print_summary

    print_summary(Path(args.root or ROOT), results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
