"""Process trees (Linux /proc): who runs where, who is still alive, and stopping a tree."""
from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path


def descendants(pid: int) -> list[int]:
    """The whole process tree under pid, whatever groups it made."""
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(proc.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def alive(pids: list[int]) -> list[int]:
    """Those of pids still running (zombies, dead but not yet reaped, do not count)."""
    out = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state not in ("Z", "X"):
            out.append(pid)
    return out


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL to proc and every process under it (a lost machine), then reap proc."""
    for pid in [proc.pid, *descendants(proc.pid)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=30)


def processes_in(folder: Path) -> list[int]:
    """PIDs of live processes whose working directory is `folder`."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and Path(os.readlink(proc / "cwd")) == folder:
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def signal_state(pid: int) -> dict:
    """Each thread's state and blocked, ignored and caught signal masks ({tid: lines}),
    and the command lines of the processes under pid ("children")."""
    state: dict = {}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            lines = (task / "status").read_text().splitlines()
        except OSError:
            continue
        state[task.name] = [line for line in lines if line.startswith(("Name", "Sig", "State"))]
    state["children"] = []
    for child in descendants(pid):
        try:
            state["children"].append(Path(f"/proc/{child}/cmdline").read_text().replace("\0", " ")[:120])
        except OSError:  # gone meanwhile
            continue
    return state
