"""Run dvc.yaml's stages through DVC, one at a time, and say what each one did.

The stage list and order come from DVC's own graph; nothing here copies it. The
status of each stage is read in process (cheap); only stages that changed get a
`dvc repro --single-item` subprocess, so dvc.lock stays true and DVC alone decides
what is up to date. What a stage did is an `StageOutcome`, read from DVC's exit code and
its output lines; its value holds the words the reports print.

A failed stage leaves the workspace as it was: DVC deletes a stage's outputs before
running it, so they are restored afterwards (cached ones from the DVC cache, the rest
from a snapshot taken just before the run).

The pipeline flow (flows/pipeline.py) wraps `run_stage` in a Prefect task; nothing
here imports Prefect. Log lines go to the logger the caller passes in.
"""
from __future__ import annotations

import contextlib
import enum
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from slimline.errors import StageFailed, TransientFailure
from slimline.repo import child_env, stop_group
from slimline.s3 import UNREACHABLE, bounded_env, explain_dvc_failure

RUN_CACHE_LINE = "is cached - skipping run"  # dvc's words when it restores from the run cache
SKIP_LINE = "didn't change, skipping"  # ... and when --allow-missing skips a stage
LOCKED = "Unable to acquire lock"  # ... and when another dvc process holds the repo lock
TAIL = 40  # output lines kept for a failure's message
# prctl(PR_SET_PDEATHSIG=1, SIGKILL) as in slimline.repo.die_with_parent, inline so the
# guard costs no imports; the setting survives the exec into dvc.
GUARD = ("import ctypes, os, signal, sys\n"
         "if sys.platform.startswith('linux'): ctypes.CDLL(None).prctl(1, signal.SIGKILL)\n"
         "os.execv(sys.executable, [sys.executable, '-m', 'dvc', *sys.argv[1:]])")

_log = logging.getLogger(__name__)


class StageOutcome(enum.Enum):
    """What a stage did in a run. The value is what the reports, the run summary and the
    dashboard print, so it must not change."""

    RAN = "ran"
    UP_TO_DATE = "skipped (up to date)"  # DVC's status says so: not run at all
    ON_REMOTE = "skipped (up to date; outputs on the remote)"  # --allow-missing skipped it
    RUN_CACHE = "restored from run cache"  # DVC had run this exact stage before
    FAILED = "failed"

    @property
    def label(self) -> str:
        return self.value

    @property
    def skipped(self) -> bool:
        """Up to date: the report on disk is from an earlier run."""
        return self in (StageOutcome.UP_TO_DATE, StageOutcome.ON_REMOTE)


@dataclass(frozen=True)
class StageRun:
    """One stage's outcome in a run; for a failure also dvc's exit code, the readable
    message, and whether another attempt could succeed."""

    stage: str
    outcome: StageOutcome
    seconds: float = 0.0
    rc: int = 0
    message: str = ""
    transient: bool = False

    @property
    def label(self) -> str:
        """The outcome as a stage's report headline shows it (a failure with its exit code)."""
        if self.outcome is StageOutcome.FAILED and self.rc:
            return f"failed (exit {self.rc})" + (", will retry" if self.transient else "")
        return self.outcome.label

    def record(self) -> dict:
        """The run summary's row: the words the summary and the dashboard show."""
        return {"stage": self.stage, "outcome": self.outcome.label, "seconds": round(self.seconds, 2)}

    def check(self) -> None:
        """Raise for a failed stage: TransientFailure when waiting can fix it (the DVC lock
        busy, the remote unreachable), else StageFailed; both carry the message."""
        if self.outcome is StageOutcome.FAILED:
            raise (TransientFailure if self.transient else StageFailed)(self.message)


def is_transient(output: str) -> bool:
    """Worth retrying later: the remote was unreachable or timed out, or another dvc
    process held the repo lock. Refused access and corruption need a person."""
    return LOCKED in output or any(m in output for m in UNREACHABLE)


def read_line(line: str, outcome: StageOutcome, pulled: bool) -> StageOutcome:
    """The outcome so far, after one more line of `dvc repro` output. `pulled`: the stage
    ran with --pull --allow-missing, whose skips mean "outputs on the remote"."""
    if RUN_CACHE_LINE in line:
        return StageOutcome.RUN_CACHE
    if pulled and SKIP_LINE in line:
        return StageOutcome.ON_REMOTE
    return outcome


def failure_text(stage: str, rc: int, lines: list[str], remote_url: str | None = None,
                 remote_name: str = "storage") -> str:
    """The failure's message: a headline, a one-line cause and fix when the remote is to
    blame, then the stage's own message, which starts at its first ERROR line."""
    first = next((i for i, line in enumerate(lines) if line.startswith("ERROR")), len(lines) - 10)
    errors = lines[max(first, 0):]
    hint = explain_dvc_failure("\n".join(lines), remote_url, remote_name) if remote_url else None
    return f"stage '{stage}' failed (exit {rc}):\n" + "\n".join(([hint] if hint else []) + errors)


# --- the graph and its status ------------------------------------------------------

class UnknownStage(ValueError):
    """A target that dvc.yaml does not define."""


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
            raise UnknownStage(f"unknown stage(s) {unknown}; dvc.yaml defines {sorted(by_name)}")
        wanted = set(targets)
        for t in targets:
            wanted |= {stage_name(repo, s) for s in nx.descendants(graph, by_name[t])}
    order = nx.lexicographical_topological_sort(graph.reverse(), key=lambda s: stage_name(repo, s))
    return [name for name in (stage_name(repo, s) for s in order) if name in wanted and name in by_name]


def abs_target(root, name: str) -> str:
    """A stage target that DVC resolves the same from any working directory."""
    path, _, stage = name.rpartition(":")
    return f"{os.path.join(str(root), path or 'dvc.yaml')}:{stage}"


def pipeline_up_to_date(repo) -> bool:
    """One status pass over the whole graph; False while another process holds DVC's lock."""
    from dvc.lock import LockError

    try:
        return not repo.status()
    except LockError:
        return False


def is_up_to_date(repo, name: str) -> bool:
    """DVC's own status check, in process (no 1 s subprocess per stage). With DVC's lock
    held by another process, say "not known to be up to date": the stage's own `dvc repro`
    then meets the lock, and the caller's retry waits for it."""
    from dvc.lock import LockError

    try:
        return not repo.status(targets=[abs_target(repo.root_dir, name)])
    except LockError:
        return False


def uncached_outs(repo, name: str) -> list[str]:
    """The stage's `cache: false` outputs (reports, plots): DVC deletes them before a
    run like any output, but cannot check them out again afterwards."""
    stage = repo.stage.collect(abs_target(repo.root_dir, name))[0]
    return [o.fs_path for o in stage.outs if not o.use_cache]


# --- outputs around a failed run ---------------------------------------------------

def snapshot(paths: Iterable[str], into: Path) -> dict[str, Path]:
    """Copies of the paths that exist, under `into`: {original path: copy}."""
    saved = {}
    for i, p in enumerate(map(Path, paths)):
        if p.exists():
            dst = into / str(i)
            (shutil.copytree if p.is_dir() else shutil.copy2)(p, dst)
            saved[str(p)] = dst
    return saved


def restore_outputs(root: Path, stage: str, saved: dict[str, Path], logger=_log) -> None:
    """After a failed stage, put back what DVC deleted before running it: cached
    outputs from the DVC cache (byte for byte what dvc.lock records), the rest
    from the snapshot taken just before the run."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    for path, copy in saved.items():
        shutil.rmtree(path, ignore_errors=True) if Path(path).is_dir() else Path(path).unlink(missing_ok=True)
        (shutil.copytree if copy.is_dir() else shutil.copy2)(copy, path)
    try:
        with Repo(str(root)) as repo:
            repo.checkout(targets=[abs_target(root, stage)], force=True)
        logger.info("%s: restored the previous outputs (DVC cache, and %d uncached)", stage, len(saved))
    except DvcException as err:  # nothing recorded yet (first run) is not an error
        logger.info("%s: no previous cached outputs to restore (%s)", stage, err)


# --- one stage -----------------------------------------------------------------------

def stage_env() -> dict:
    """Environment for dvc and stage subprocesses: an outage costs seconds (slimline/s3.py)."""
    return bounded_env(child_env())


def repro_args(stage: str, force: bool = False, pull: bool = False, no_run_cache: bool = False) -> list[str]:
    """`dvc` arguments that reproduce one stage. pull: fetch only what this stage needs from
    the remote; a stage whose only change is outputs that live there is skipped rather than
    rerun (or fully pulled)."""
    return ["repro", "--single-item", stage, *(["--pull", "--allow-missing"] if pull else []),
            *(["--force"] if force else []), *(["--no-run-cache"] if no_run_cache else [])]


def _stop(proc: subprocess.Popen, stage: str, logger) -> None:
    """Stop a still-running stage and everything it started (dvc runs the stage's
    command in a child of its own), and wait until the whole group is gone."""
    if proc.poll() is None:
        logger.warning("%s: stopping the stage (process group %d)", stage, proc.pid)
        stop_group(proc)


class SignalWatch:
    """Sees a SIGTERM or SIGINT even when its handler's exception was lost.

    The caller's handler (Prefect's, in a flow run) raises an exception in whatever
    code the main thread runs when the signal lands. That can be a finalizer or a
    generator being closed, where Python prints "Exception ignored" and drops it: the
    flow then ignores the stop and the stage trains on. CPython writes every handled
    signal's number to the wakeup fd before its handler runs, so a byte found here
    after the handler had its turn means the stop went missing. Main thread only (the
    only one Python runs handlers in); elsewhere it sees nothing. A wakeup fd set
    before it gets every byte passed on."""

    STOPS = (signal.SIGTERM, signal.SIGINT)

    def __enter__(self) -> SignalWatch:
        self._fds = self._old = None
        if threading.current_thread() is threading.main_thread():
            r, w = os.pipe()
            os.set_blocking(r, False)
            os.set_blocking(w, False)
            self._fds = (r, w)
            self._old = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        return self

    def missed(self) -> int | None:
        """A stop signal that arrived since the last call, if any."""
        if self._fds is None:
            return None
        try:
            got = os.read(self._fds[0], 512)
        except BlockingIOError:
            return None
        if self._old is not None and self._old >= 0:  # whoever watched before still hears them
            with contextlib.suppress(OSError):
                os.write(self._old, got)
        return next((sig for sig in self.STOPS if sig in got), None)

    def __exit__(self, *exc) -> None:
        if self._fds is not None:
            signal.set_wakeup_fd(self._old)
            for fd in self._fds:
                os.close(fd)


def _feed(on_line: Callable[[str], None], line: str, logger) -> None:
    """Pass a line on; a failing consumer (a dashboard blip) must not stop hours of training."""
    try:
        on_line(line)
    except Exception as err:  # noqa: BLE001 - logged; the stage goes on
        logger.warning("could not pass on a line of the stage's output: %s", err)


def run_stage(root: Path, stage: str, *, force: bool = False, pull: bool = False, no_run_cache: bool = False,
              uncached: Iterable[str] = (), remote_url: str | None = None, remote_name: str = "storage",
              on_line: Callable[[str], None] | None = None, logger=_log) -> StageRun:
    """`dvc repro --single-item stage` in its own process group, each output line passed to
    on_line as it comes. A failure restores the outputs DVC deleted (unless dvc never took
    its lock) and comes back as StageOutcome.FAILED with its message; StageRun.check raises it.

    Interrupted (Ctrl-C, SIGTERM, a cancelled run), it stops the stage's whole process
    group before the exception goes on; the checkpoints stay for the rerun to resume from.
    pull, remote_url and remote_name: the DVC remote, when there is one.
    """
    root = Path(root)
    start = time.perf_counter()
    dvc_args = repro_args(stage, force, pull, no_run_cache)
    # dvc dies with this process (GUARD), and the stage with dvc: a SIGKILLed
    # worker leaves no orphan training that would hold DVC's lock.
    cmd = [sys.executable, "-c", GUARD, *dvc_args]
    logger.info("%s: running `dvc %s`", stage, " ".join(dvc_args))
    tail: deque[str] = deque(maxlen=TAIL)
    outcome = StageOutcome.RAN
    snapshot_dir = Path(tempfile.mkdtemp(prefix=f"slimline-{stage.replace('@', '_')}-"))
    saved = snapshot(uncached, snapshot_dir)
    # Own process group, so stopping the run can stop the stage and its children.
    proc = subprocess.Popen(cmd, cwd=root, env=stage_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1, start_new_session=True)
    try:
        with SignalWatch() as watch:
            for line in proc.stdout:
                line = line.rstrip()
                tail.append(line)
                outcome = read_line(line, outcome, pull)
                if on_line:
                    _feed(on_line, line, logger)
                if (sig := watch.missed()) is not None:
                    # Its handler ran and its exception was lost: deliver it again, here.
                    logger.warning("%s: %s arrived but did not stop the run: raising it again",
                                   stage, signal.Signals(sig).name)
                    signal.raise_signal(sig)
            rc = proc.wait()
    except BaseException:  # cancelled or interrupted: the rerun resumes; drop the snapshot
        shutil.rmtree(snapshot_dir, ignore_errors=True)
        raise
    finally:
        _stop(proc, stage, logger)  # no-op when it finished; on cancel/interrupt, stops it
    seconds = time.perf_counter() - start
    # dvc that could not take the lock touched nothing; the lock holder owns the outputs now
    try:
        if rc != 0 and not any(LOCKED in line for line in tail):
            restore_outputs(root, stage, saved, logger)
    except Exception as err:  # noqa: BLE001 - the stage's own failure is what the user must see
        logger.error("%s: could not restore the previous outputs: %s", stage, err)
    finally:
        shutil.rmtree(snapshot_dir, ignore_errors=True)
    if rc == 0:
        return StageRun(stage, outcome, seconds)
    lines = list(tail)
    message = failure_text(stage, rc, lines, remote_url, remote_name)
    return StageRun(stage, StageOutcome.FAILED, seconds, rc, message,
                    transient=is_transient("\n".join(lines)))  # DVC lock busy, remote unreachable
