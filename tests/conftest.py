"""Fixtures: the tiny ML build, the toy project for the plumbing, the committed-lock
reproduction, one Prefect server.

End-to-end tests never touch the working tree: they run in a copy of the project's
tracked and untracked-but-not-ignored files, committed into a fresh git repo, exactly as
a clone would look (plus uncommitted edits under test). Helpers live in tests/support/.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

# The suite runs more processes than there are cores (two workers, the background builds,
# the stages they start). OpenMP threads that spin while waiting for a descheduled peer
# burn the CPU the others need: passive waiting halved the 2-thread baseline training of
# test_committed_lock beside one busy process (108 s -> 60 s, same bytes). Set before
# torch loads here; every stage process inherits it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# `import openvino` imports absl.logging, whose handler keeps the sys.stderr of that moment:
# under pytest, the capture's stream. Prefect's first import configures logging, which
# closes every handler's stream, the capture's too, and every later test in that process
# errors with "I/O operation on closed file". absl never closes the real stderr: point its
# handler there before anything imports OpenVINO.
if importlib.util.find_spec("absl") is not None:
    import absl.logging

    absl.logging.get_absl_handler().python_handler.stream = sys.__stderr__

# Before anything imports torch: pins this process's CPU math for train.numerics
# (portable by default), as every stage process gets it. A test that needs the
# other mode trains in a subprocess.
import tasks  # noqa: F401

# isort: split

from slimline.repo import stop_group
from tests.support import background
from tests.support.committed_lock import reproduce
from tests.support.prefect_server import PrefectServer, start_prefect_server
from tests.support.project import ROOT, copy_tree
from tests.support.tiny import build_tiny
from tests.support.toy import build_toy

# --- set-up made once per run, in the background ---------------------------------------
# The controller process starts, before the workers collect: the tiny pipeline (a `dvc
# repro` of ~60 s), the toy project (~5 s), the committed-lock reproduction (~60 s of
# 2-thread training, at a low priority: nothing waits for it before the end) and one
# Prefect server (~15 s to start).
# The workers run the plumbing tests meanwhile and wait only when a test needs one. The
# builds are shared read-only (tests copy them before changing anything); the server is
# shared by every worker, each test using names of its own. The environment hands them
# over. Without xdist (or for unit tests only), the fixtures make their own.
SHARED_TINY, SHARED_TOY, SHARED_COMMITTED, SHARED_PREFECT = \
    "SLIMLINE_TEST_TINY", "SLIMLINE_TEST_TOY", "SLIMLINE_TEST_COMMITTED", "SLIMLINE_TEST_PREFECT"


def _runs_e2e(config) -> bool:
    here = Path(config.invocation_params.dir)
    for arg in config.args or ["tests"]:
        path = (here / arg.split("::")[0]).resolve()
        if path in (ROOT, ROOT / "tests") or ROOT / "tests" / "e2e" in (path, *path.parents):
            return True
    return False


def pytest_configure(config):
    workers = config.getoption("numprocesses", None)
    if hasattr(config, "workerinput") or not isinstance(workers, int) or workers < 1:
        return
    # xdist hands out whole files in the order pytest_collection_modifyitems gives, not
    # sorted by their test count (its default), which would put the longest ones last.
    config.option.loadscopereorder = False
    if SHARED_TINY in os.environ or not _runs_e2e(config):
        return
    base = Path(tempfile.mkdtemp(prefix="slimline-tests-"))
    builds = [background.start("tests.support.tiny", base / "tiny"),
              background.start("tests.support.toy", base / "toy")]
    os.environ[SHARED_TINY] = str(base / "tiny")  # the workers start after this hook
    os.environ[SHARED_TOY] = str(base / "toy")
    if (ROOT / "dvc.lock").exists():
        builds.append(background.start("tests.support.committed_lock", base / "committed", nice=10))
        os.environ[SHARED_COMMITTED] = str(base / "committed")
    server = start_prefect_server(base / "prefect")
    os.environ[SHARED_PREFECT] = f"{server.url} {server.home}"
    config._slimline_shared = (base, builds, server)


def pytest_unconfigure(config):
    shared = getattr(config, "_slimline_shared", None)
    if shared:
        base, builds, server = shared
        for build in builds:
            stop_group(build)
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


# Files that wait for a background build, and the longest of the rest, in the order given
# below (measured with --durations; the longest first, so that no worker is left with a
# long file at the end). Every other file comes in between, unit tests last: many short
# files even out the end of the run.
WAITS = {"tiny_pipeline": 1, "pipeline_copy": 1, "committed_repro": 2}
LONGEST = ["e2e/test_orchestration.py", "e2e/test_search.py", "e2e/test_flow.py", "e2e/test_s3.py",
           "e2e/test_remote_flow.py", "e2e/test_own_model.py", "e2e/test_training_stages.py",
           "unit/test_validate.py", "unit/test_numerics.py", "unit/test_qat.py", "unit/test_zoo.py",
           "unit/test_pruning.py", "unit/test_s3_parts.py", "unit/test_features.py",
           "unit/test_flow_parts.py"]


def pytest_collection_modifyitems(session, config, items):
    """The plumbing e2e files first, longest first, while the background builds run; then
    the files that need the tiny build; then the unit tests; the committed-lock check last.
    (With --dist loadfile, xdist hands out whole files in this order.)"""
    tests = ROOT / "tests"

    def rank(path: Path) -> tuple:
        rel = path.relative_to(tests).as_posix()
        waits = max((WAITS.get(f, 0) for item in by_file[path]
                     for f in getattr(item, "fixturenames", ())), default=0)
        long = LONGEST.index(rel) if rel in LONGEST else len(LONGEST)
        return (waits == 2, waits == 0 and rel.startswith("unit/"), waits == 1, long, rel)

    by_file: dict[Path, list] = {}
    for item in items:
        by_file.setdefault(item.path, []).append(item)
    order = {path: rank(path) for path in by_file}
    items.sort(key=lambda item: order[item.path])


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory) -> Path:
    """A project copy on the tiny config after one full `dvc repro`, committed. Shared
    read-only: tests copy it (pipeline_copy) before changing anything."""
    shared = os.environ.get(SHARED_TINY)
    if shared:
        return background.wait_ready(Path(shared))
    return build_tiny(tmp_path_factory.mktemp("tiny") / "proj")


@pytest.fixture(scope="session")
def committed_repro(tmp_path_factory) -> Path:
    """A fresh copy of the project with the committed dvc.lock's first stages rerun
    (tests/support/committed_lock.py). Read-only."""
    if not (ROOT / "dvc.lock").exists():
        pytest.skip("no committed dvc.lock yet")
    shared = os.environ.get(SHARED_COMMITTED)
    if shared:
        return background.wait_ready(Path(shared))
    return reproduce(tmp_path_factory.mktemp("committed") / "proj")


@pytest.fixture
def pipeline_copy(tiny_pipeline: Path, tmp_path: Path) -> Path:
    """A private copy of the finished tiny pipeline (git, DVC cache and outputs)."""
    return copy_tree(tiny_pipeline, tmp_path / "proj")


@pytest.fixture(scope="session")
def toy_project(tmp_path_factory) -> Path:
    """The toy project (tests/support/toy.py) after one `dvc repro`, committed; a few
    seconds. Shared read-only: tests copy it (toy_copy)."""
    shared = os.environ.get(SHARED_TOY)
    if shared:
        return background.wait_ready(Path(shared))
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
