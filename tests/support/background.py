"""Set-up that a test run starts once, in the background, and tests wait for: the
controller (tests/conftest.py) runs `python -m MODULE build DEST` as a child process,
which writes DEST.ready, or DEST.failed with the error; a test calls wait_ready(DEST)."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from tests.support.project import ROOT, run_env


def start(module: str, dest: Path, nice: int = 0) -> subprocess.Popen:
    """`python -m module build dest`, its output in dest + '.log'. die_with_parent: a
    controller killed outright (no unconfigure) leaves no orphans. `nice`: a lower
    priority, for work that can fill the gaps the tests leave."""
    from slimline.stage import die_with_parent

    def prepare_child():
        die_with_parent()
        if nice:
            os.nice(nice)

    with dest.with_suffix(".log").open("w") as log:
        return subprocess.Popen([sys.executable, "-m", module, "build", str(dest)], cwd=ROOT,
                                env=run_env(), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=prepare_child)


def build_main(argv: list[str], build: Callable[[Path], object], usage: str) -> None:
    """The `build DEST` command of a background module: build(DEST), then the marker."""
    if len(argv) != 2 or argv[0] != "build":
        raise SystemExit(usage)
    out = Path(argv[1])
    try:
        build(out)
    except Exception as err:  # noqa: BLE001 - the waiting tests show it
        out.with_suffix(".failed").write_text(str(err))
        raise
    out.with_suffix(".ready").write_text("")


def wait_ready(dest: Path, timeout_s: float = 900) -> Path:
    """dest, once its build is done; its error and log if it failed or timed out."""
    deadline = time.monotonic() + timeout_s
    while not dest.with_suffix(".ready").exists():
        failed = dest.with_suffix(".failed")
        if failed.exists() or time.monotonic() > deadline:
            log = dest.with_suffix(".log")
            tail = log.read_text()[-3000:] if log.exists() else ""
            raise RuntimeError(f"the shared build {dest.name} was not made:\n"
                               f"{failed.read_text() if failed.exists() else 'timed out'}\n{tail}")
        time.sleep(0.5)
    return dest
