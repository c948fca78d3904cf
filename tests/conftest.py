"""Shared fixtures: temporary project copies and one finished tiny pipeline per session.

End-to-end tests never touch the working tree: they run in a copy of the
project's tracked and untracked-but-not-ignored files, committed into a fresh
git repo, exactly as a clone would look (plus uncommitted edits under test).
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
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
from slimline.stage import die_with_parent
from benchmarks.project import ROOT, TINY, build_tiny, copy_project, run_env, update_params  # noqa: F401  (shared with the tests)


def tiny_prepared(n: int = 60, seed: int = 0):
    """Tiny random data for training tests: n 12x12 grayscale images per split, 3 classes."""
    import numpy as np

    from slimline.data.dataset import Prepared

    rng = np.random.default_rng(seed)
    splits = {name: (rng.integers(0, 256, (n, 1, 12, 12)).astype(np.uint8), np.arange(n) % 3)
              for name in ("train", "val", "test")}
    return Prepared(splits=splits, meta={"input_shape": [1, 12, 12], "num_classes": 3,
                                         "mean": [127.0], "std": [70.0]})


def sh(cmd: list[str], cwd: Path, check: bool = True, **env: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env={**run_env(), **env}, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def dvc(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    return sh([sys.executable, "-m", "dvc", *args], cwd, check)


# --- set-up made once per run, in the background ---------------------------------------
# The tiny pipeline (a `dvc repro` of ~50 s) is built once per test run and the Prefect
# servers (~25 s each to start) are started, all by the controller process in the
# background: the workers run unit tests meanwhile and wait only when a test needs one.
# The tiny pipeline is shared (tests copy it before changing anything); each worker gets
# its own server, because tests create work pools and deployments by fixed names. The
# environment hands them over. Without xdist (or for unit tests only), the fixtures
# make their own.
SHARED_TINY, SHARED_PREFECT = "SLIMLINE_TEST_TINY", "SLIMLINE_TEST_PREFECT"


def _runs_e2e(config) -> bool:
    here = Path(config.invocation_params.dir)
    for arg in config.args or ["tests"]:
        path = (here / arg.split("::")[0]).resolve()
        if path in (ROOT, ROOT / "tests") or ROOT / "tests" / "e2e" in (path, *path.parents):
            return True
    return False


def pytest_configure(config):
    workers = config.getoption("numprocesses", None)
    if hasattr(config, "workerinput") or not isinstance(workers, int) or workers < 1 \
            or SHARED_TINY in os.environ or not _runs_e2e(config):
        return
    base = Path(tempfile.mkdtemp(prefix="slimline-tests-"))
    with (base / "tiny.log").open("w") as log:
        # die_with_parent: a controller killed outright (no unconfigure) leaves no orphans
        tiny = subprocess.Popen([sys.executable, "-m", "benchmarks.project", "tiny", str(base / "tiny")],
                                cwd=ROOT, env=run_env(), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=die_with_parent)
    servers = [start_prefect_server(base / f"prefect-gw{i}") for i in range(workers)]
    os.environ[SHARED_TINY] = str(base / "tiny")  # the workers start after this hook
    for i, server in enumerate(servers):
        os.environ[f"{SHARED_PREFECT}_GW{i}"] = f"{server.url} {server.home}"
    config._slimline_shared = (base, tiny, servers)


def pytest_unconfigure(config):
    shared = getattr(config, "_slimline_shared", None)
    if shared:
        base, tiny, servers = shared
        stop_group(tiny)
        for server in servers:
            server.stop()
        shutil.rmtree(base, ignore_errors=True)


SHARED_FIXTURES = {"tiny_pipeline", "pipeline_copy", "prefect_api"}


def pytest_collection_modifyitems(session, config, items):
    """Unit tests first, then end-to-end files that need none of the shared set-up, then the
    rest: the workers stay busy while the controller builds the tiny pipeline. (With
    --dist loadfile, xdist hands out whole files in this order.)"""
    def waits(item) -> bool:
        return any(f in SHARED_FIXTURES for f in getattr(item, "fixturenames", ()))

    files: dict[str, bool] = {}
    for item in items:
        files[item.path] = files.get(item.path, False) or waits(item)
    unit = ROOT / "tests" / "unit"
    items.sort(key=lambda item: (unit not in item.path.parents, files[item.path]))


def _wait_for_tiny(root: Path) -> Path:
    deadline = time.monotonic() + 900
    while not root.with_suffix(".ready").exists():
        failed = root.with_suffix(".failed")
        if failed.exists() or time.monotonic() > deadline:
            log = (root.parent / "tiny.log").read_text()[-3000:]
            raise RuntimeError(f"the shared tiny pipeline was not built:\n"
                               f"{failed.read_text() if failed.exists() else 'timed out'}\n{log}")
        time.sleep(0.5)
    return root


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory) -> Path:
    """A project copy on the tiny config after one full `dvc repro`, committed. Shared:
    tests copy it (pipeline_copy) before changing anything."""
    shared = os.environ.get(SHARED_TINY)
    if shared:
        return _wait_for_tiny(Path(shared))
    return build_tiny(tmp_path_factory.mktemp("tiny") / "proj")


def copy_tree(src: Path, dest: Path) -> Path:
    """A private copy of a project (git, DVC cache and outputs), without DVC's lock and
    temporary files, which another worker's dvc may be writing."""
    shutil.copytree(src, dest, symlinks=True,
                    ignore=lambda d, names: ["tmp"] if Path(d).name == ".dvc" else [])
    return dest


@pytest.fixture
def pipeline_copy(tiny_pipeline: Path, tmp_path: Path) -> Path:
    """A private copy of the finished tiny pipeline (git, DVC cache and outputs)."""
    return copy_tree(tiny_pipeline, tmp_path / "proj")


def tree_digest(path: Path) -> dict[str, bytes]:
    """Every file's bytes under path, for 'untouched' assertions."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# A number standing alone, or with an `x` (a ratio) or `%` after it; not part of a name
# (int8, p50, AVX512) or a version (1.32.0).
NUMBER = re.compile(r"(?<![\w.])(\d+(?:,\d{3})*(?:\.\d+)?)(?=x(?!\w)|[^\w.]|\.(?!\d)|$)")


def numbers_not_in(text: str, data) -> list[str]:
    """The numbers in `text` that no value in `data` (any depth) renders as: a card or
    report that shows only what its JSON holds gives []. A number matches a value in
    the usual renderings (as is, thousands commas, fixed decimals, percent); numbers
    inside the JSON's strings count too (a version, a path)."""
    seen: set[str] = set()

    def add(x) -> None:
        if isinstance(x, dict):
            for v in x.values():
                add(v)
        elif isinstance(x, list):
            for v in x:
                add(v)
        elif isinstance(x, str):
            seen.update(NUMBER.findall(x))
        elif isinstance(x, (int, float)) and not isinstance(x, bool):
            a = abs(x)
            seen.update({str(a), f"{a:,}", f"{a:g}"})
            for d in range(5):
                seen.update({f"{a:.{d}f}", f"{a:,.{d}f}", f"{a * 100:.{d}f}"})

    add(data)
    return [n for n in NUMBER.findall(text) if n not in seen]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PrefectServer:
    """A real `prefect server start` on a free loopback port, SQLite in tmp."""

    url: str  # the API URL, .../api
    home: Path  # PREFECT_HOME of the server (database, logs)
    proc: subprocess.Popen | None = None  # set in the process that started it

    def wait(self, timeout: float = 180) -> None:
        """Until /health answers (CI machines start it slowly)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2):
                    return
            except OSError:
                if (self.proc and self.proc.poll() is not None) or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"prefect server did not start:\n"
                                       f"{(self.home / 'server.log').read_text()[-3000:]}")
                time.sleep(0.5)

    def stop(self) -> None:
        if self.proc:
            stop_group(self.proc, grace=20)

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


def start_prefect_server(home: Path) -> PrefectServer:
    """Start `prefect server start` on a free loopback port; PrefectServer.wait() blocks
    until it answers."""
    home.mkdir(parents=True, exist_ok=True)
    server = PrefectServer(f"http://127.0.0.1:{free_port()}/api", home)
    cli = str(Path(sys.executable).parent / "prefect")
    port = server.url.rsplit(":", 1)[1].split("/")[0]
    with (home / "server.log").open("w") as log:
        server.proc = subprocess.Popen([cli, "server", "start", "--host", "127.0.0.1", "--port", port,
                                        "--analytics-off"], env=server.env(), stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True,
                                       preexec_fn=die_with_parent)
    return server


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory):
    """One real Prefect server for the whole run (starting one costs ~25 s), and this
    process pointed at it. One the fixture started is stopped, with everything it
    started, at the end."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # gw0, gw1, ...
    shared = os.environ.get(f"{SHARED_PREFECT}_{worker.upper()}") if worker else None
    if shared:
        url, home = shared.split(" ", 1)
        server = PrefectServer(url, Path(home))
    else:
        server = start_prefect_server(tmp_path_factory.mktemp("prefect-home"))
    try:
        server.wait()
        with temporary_settings(updates={PREFECT_API_URL: server.url}):
            yield server
    finally:
        if not shared:
            server.stop()
