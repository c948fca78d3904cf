"""Shared fixtures: temporary project copies and one finished tiny pipeline per session.

End-to-end tests never touch the working tree: they run in a copy of the
project's tracked and untracked-but-not-ignored files, committed into a fresh
git repo, exactly as a clone would look (plus uncommitted edits under test).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

# Before anything imports torch: pins this process's CPU math for train.numerics
# (portable by default), as every stage process gets it. A test that needs the
# other mode trains in a subprocess.
import tasks  # noqa: F401

from slimline.repo import stop_group
from benchmarks.project import ROOT, TINY, copy_project, run_env, update_params  # noqa: F401  (shared with the tests)


def sh(cmd: list[str], cwd: Path, check: bool = True, **env: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env={**run_env(), **env}, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def dvc(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    return sh([sys.executable, "-m", "dvc", *args], cwd, check)


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory) -> Path:
    """A project copy on the tiny config after one full `dvc repro`, committed."""
    root = copy_project(tmp_path_factory.mktemp("tiny") / "proj")
    update_params(root, TINY)
    repro = dvc("repro", cwd=root)
    sh(["git", "add", "-A"], root)
    sh(["git", "commit", "-qm", "tiny repro"], root)
    (root / "repro.log").write_text(repro.stdout + repro.stderr)
    return root


@pytest.fixture
def pipeline_copy(tiny_pipeline: Path, tmp_path: Path) -> Path:
    """A private copy of the finished tiny pipeline (git, DVC cache and outputs)."""
    dest = tmp_path / "proj"
    shutil.copytree(tiny_pipeline, dest, symlinks=True)
    return dest


def tree_digest(path: Path) -> dict[str, bytes]:
    """Every file's bytes under path, for 'untouched' assertions."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PrefectServer:
    """A real `prefect server start` on a free loopback port, SQLite in tmp."""

    url: str  # the API URL, .../api
    home: Path  # PREFECT_HOME of the server (database, logs)

    def env(self, **extra: str) -> dict:
        """Environment for clients, workers and flows that talk to this server."""
        return {**run_env(), "PREFECT_API_URL": self.url, "PREFECT_HOME": str(self.home),
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false", **extra}

    def prefect(self, *args: str, cwd: Path, check: bool = True, **extra: str) -> subprocess.CompletedProcess:
        cli = str(Path(sys.executable).parent / "prefect")
        proc = subprocess.run([cli, "--no-prompt", *args], cwd=cwd, env=self.env(**extra),
                              capture_output=True, text=True)
        if check and proc.returncode != 0:
            raise AssertionError(f"prefect {args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory):
    """One real Prefect server for the whole session (starting one costs ~25 s), and
    this process pointed at it. Stopped, with everything it started, at the end."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    server = PrefectServer(f"http://127.0.0.1:{port}/api", home)
    cli = str(Path(sys.executable).parent / "prefect")
    log = (home / "server.log").open("w")
    proc = subprocess.Popen([cli, "server", "start", "--host", "127.0.0.1", "--port", str(port),
                             "--analytics-off"], env=server.env(), stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 180  # CI machines start it slowly
    while True:
        try:
            with urllib.request.urlopen(f"{server.url}/health", timeout=2):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                os.killpg(proc.pid, signal.SIGKILL) if proc.poll() is None else None
                raise RuntimeError(f"prefect server did not start:\n{(home / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.url}):
            yield server
    finally:
        stop_group(proc, grace=20)
        log.close()
