"""Fixtures: the tiny ML build, the toy project for the plumbing, one Prefect server.

End-to-end tests never touch the working tree: they run in a copy of the project's
tracked and untracked-but-not-ignored files, committed into a fresh git repo, exactly as
a clone would look (plus uncommitted edits under test). Helpers live in tests/support/.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

# Before anything imports torch: pins this process's CPU math for train.numerics
# (portable by default), as every stage process gets it. A test that needs the
# other mode trains in a subprocess.
import tasks  # noqa: F401

from slimline.repo import stop_group
from slimline.stage import die_with_parent
from tests.support.prefect_server import PrefectServer, start_prefect_server
from tests.support.project import ROOT, copy_tree, run_env
from tests.support.tiny import build_tiny
from tests.support.toy import build_toy

# --- set-up made once per run, in the background ---------------------------------------
# The tiny pipeline (a `dvc repro` of ~60 s) is built once per test run and one Prefect
# server (~25 s to start) is started, both by the controller process in the background:
# the workers run unit tests meanwhile and wait only when a test needs one. The tiny
# pipeline is shared read-only (tests copy it before changing anything); the server is
# shared by every worker, each test using names of its own. The environment hands them
# over. Without xdist (or for unit tests only), the fixtures make their own.
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
        tiny = subprocess.Popen([sys.executable, "-m", "tests.support.tiny", "build", str(base / "tiny")],
                                cwd=ROOT, env=run_env(), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=die_with_parent)
    server = start_prefect_server(base / "prefect")
    os.environ[SHARED_TINY] = str(base / "tiny")  # the workers start after this hook
    os.environ[SHARED_PREFECT] = f"{server.url} {server.home}"
    config._slimline_shared = (base, tiny, server)


def pytest_unconfigure(config):
    shared = getattr(config, "_slimline_shared", None)
    if shared:
        base, tiny, server = shared
        stop_group(tiny)
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


SHARED_FIXTURES = {"tiny_pipeline", "pipeline_copy"}


def pytest_collection_modifyitems(session, config, items):
    """Unit tests first, then end-to-end files that need no tiny build, then the rest: the
    workers stay busy while the controller builds it. (With --dist loadfile, xdist hands
    out whole files in this order.)"""
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
    """A project copy on the tiny config after one full `dvc repro`, committed. Shared
    read-only: tests copy it (pipeline_copy) before changing anything."""
    shared = os.environ.get(SHARED_TINY)
    if shared:
        return _wait_for_tiny(Path(shared))
    return build_tiny(tmp_path_factory.mktemp("tiny") / "proj")


@pytest.fixture
def pipeline_copy(tiny_pipeline: Path, tmp_path: Path) -> Path:
    """A private copy of the finished tiny pipeline (git, DVC cache and outputs)."""
    return copy_tree(tiny_pipeline, tmp_path / "proj")


@pytest.fixture(scope="session")
def toy_project(tmp_path_factory) -> Path:
    """The toy project (tests/support/toy.py) after one `dvc repro`, committed; a few
    seconds, once per worker. Shared read-only: tests copy it (toy_copy)."""
    return build_toy(tmp_path_factory.mktemp("toy") / "proj")


@pytest.fixture
def toy_copy(toy_project: Path, tmp_path: Path) -> Path:
    """A private copy of the finished toy project (git, DVC cache and outputs)."""
    return copy_tree(toy_project, tmp_path / "proj")


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory):
    """One real Prefect server for the whole run (starting one costs ~25 s), and this
    process pointed at it. One the fixture started is stopped, with everything it
    started, at the end."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    shared = os.environ.get(SHARED_PREFECT)
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
