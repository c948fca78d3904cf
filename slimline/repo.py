"""The project's repository as the flows and the search see it: git commands, its git and
DVC remotes, the environment its dvc and stage subprocesses run in and how they are
stopped, and safe names for
git refs and dashboard keys. One helper per job, so they cannot drift apart."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path


class GitError(RuntimeError):
    pass


def git(*args: str, cwd: str | Path | None = None, check: bool = True) -> str:
    """`git *args` in cwd, its stdout stripped. A failure raises GitError naming the command
    and git's message, unless check=False (then stdout, often "", is returned)."""
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if check and proc.returncode:
        raise GitError(f"git {' '.join(args)} failed in {cwd or os.getcwd()}: {proc.stderr.strip()}")
    return proc.stdout.strip()


def head(root: str | Path) -> str:
    return git("rev-parse", "HEAD", cwd=root)


def is_dirty(root: str | Path) -> bool:
    """Whether tracked files differ from HEAD."""
    return bool(git("status", "--porcelain", "--untracked-files=no", cwd=root, check=False))


def git_remote(root: str | Path) -> str | None:
    """`origin` if the repository has it, else its first remote, else None."""
    names = git("remote", cwd=root, check=False).split()
    return "origin" if "origin" in names else (names[0] if names else None)


def dvc_remote(root: str | Path) -> str | None:
    """The default DVC remote's name, from every config level (system, global, repo,
    local), as `dvc push` reads them; None when there is none."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        name = repo.config.get("core", {}).get("remote")
        return name if name and name in repo.config.get("remote", {}) else None


def child_env(**extra: str) -> dict:
    """The environment for dvc and stage subprocesses."""
    env = dict(os.environ)
    # This interpreter first on PATH: dvc.yaml runs `python -m ...`, and a worker's venv
    # must run the stages.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONUNBUFFERED"] = "1"  # line-by-line logs, not 4 KB blocks at exit
    env["TQDM_DISABLE"] = "1"  # no progress bars in logs
    env["DVC_NO_ANALYTICS"] = "1"
    env.update(extra)
    return env


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def die_with_parent() -> None:
    """Linux: get SIGKILL when the parent process dies. A stage whose runner (dvc, or
    the flow above it) was killed would otherwise train on as an orphan, holding
    DVC's lock so that the rerun cannot start. The setting survives exec."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def stop_group(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """Stop a still-running child started with start_new_session=True and everything it
    started (dvc and the stage under it, a server and its workers): SIGTERM, then SIGKILL
    after `grace` s, and wait until the whole group is gone."""
    if proc.poll() is not None:
        return
    for sig, wait_s in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            proc.poll()  # reap our direct child so it does not linger as a zombie
            if not _group_alive(proc.pid):
                return
            time.sleep(0.05)


def slug(raw: str, lower: bool = True) -> str:
    """Letters, digits and single dashes: always safe in a git ref name (an experiment) and,
    lowercased, in a Prefect artifact key."""
    text = raw.lower() if lower else raw
    return re.sub(r"-+", "-", re.sub(r"[^A-Za-z0-9-]", "-", text)).strip("-")
