"""Where a deployment's run happens: a persistent git checkout per deployment.

`checkout` is a Prefect pull step (see prefect.yaml). Before each run of a
deployment, the worker clones the tracked branch into its workspace, or
updates the clone it made last time, so a scheduled run always reproduces the
latest commit of that branch. DVC outputs (ignored by git) stay in the
workspace between runs, and the DVC cache is shared by every workspace on the
machine, so a new commit only reruns what changed.

Settings, all optional (environment of the worker):
  SLIMLINE_REPO        git URL or path to clone (default: the repository the
                       worker's own code was installed from)
  SLIMLINE_WORKSPACES  folder holding one checkout per deployment
                       (default: ~/.slimline/workspaces)
  SLIMLINE_DVC_CACHE   DVC cache shared by the workspaces (default:
                       ~/.cache/slimline/dvc-cache)
  SLIMLINE_DVC_CONFIG_LOCAL  a file copied to each workspace's .dvc/config.local:
                       the DVC remote's endpoint and keys (or use `dvc remote
                       add --global` on the worker machine)
"""
from __future__ import annotations

import os
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path

from slimline.repo import git

ROOT = Path(__file__).resolve().parent.parent


def default_repository() -> str:
    """The worker's own repository: its `origin` if it has one, else the folder itself."""
    url = git("remote", "get-url", "origin", cwd=ROOT, check=False)
    return url or str(ROOT)


def _deployment_name() -> str:
    from prefect.runtime import deployment

    return deployment.name or "adhoc"


def checkout(branch: str = "main", repository: str | None = None, workspace: str | None = None) -> dict:
    """Prefect pull step: clone or update `branch` in this deployment's workspace.

    The clone keeps the whole commit history (blobs fetched as needed): `dvc metrics
    diff` and the regression gate compare with earlier commits, and `dvc exp` commands
    fail in shallow clones; Prefect's own git_clone step clones 1 commit.
    Returns {"directory", "commit"} for later steps (`{{ checkout.directory }}`).
    """
    repository = repository or os.environ.get("SLIMLINE_REPO") or default_repository()
    base = Path(os.environ.get("SLIMLINE_WORKSPACES", Path.home() / ".slimline" / "workspaces"))
    directory = (base / (workspace or _deployment_name())).resolve()
    if not (directory / ".git").exists():
        directory.parent.mkdir(parents=True, exist_ok=True)
        git("clone", "--filter=blob:none", "--no-single-branch", "--branch", branch,
            repository, str(directory))
    else:
        git("remote", "set-url", "origin", repository, cwd=directory)
        git("fetch", "origin", branch, cwd=directory)
        # The tracked branch wins: params.yaml edits left by an earlier run's
        # overrides are dropped. DVC outputs are git-ignored, so they stay.
        git("checkout", "--force", "-B", branch, "FETCH_HEAD", cwd=directory)
        git("clean", "-fd", cwd=directory)
    # The worker's DVC remote settings (endpoint, keys: never in git), if it keeps them
    # in a file rather than in DVC's global config.
    local = os.environ.get("SLIMLINE_DVC_CONFIG_LOCAL")
    if local:
        shutil.copyfile(local, directory / ".dvc" / "config.local")
    cache = Path(os.environ.get("SLIMLINE_DVC_CACHE", Path.home() / ".cache" / "slimline" / "dvc-cache"))
    cache.mkdir(parents=True, exist_ok=True)
    # What `dvc cache dir --local` does, through the same call, without a process (~0.5 CPU-s)
    from dvc.config import Config

    with Config(dvc_dir=str(directory / ".dvc")).edit("local") as conf:
        conf["cache"]["dir"] = str(cache)
    _use_workspace_code(directory)
    return {"directory": str(directory), "commit": git("rev-parse", "HEAD", cwd=directory)}


def _use_workspace_code(directory: Path) -> None:
    """Make this process import `flows`, `tasks` and `slimline` from the fresh checkout,
    not from the worker's installed copy, so the flow runs the same code as its stages."""
    sys.path.insert(0, str(directory))
    for name in [m for m in sys.modules if m.split(".")[0] in ("flows", "tasks", "slimline")]:
        del sys.modules[name]


def slot_name(root: Path) -> str:
    """The global concurrency limit guarding one workspace (host + path: the same path
    on two machines is two workspaces)."""
    import hashlib
    import socket

    digest = hashlib.sha1(f"{socket.gethostname()}:{Path(root).resolve()}".encode()).hexdigest()
    return f"slimline-workspace-{digest[:12]}"


# A killed holder stops renewing its lease; the server frees the slot 60 s later
# (the shortest lease the server accepts), so a dead run never blocks the next forever.
LEASE_S = 60


@contextmanager
def workspace_slot(root: Path, logger):
    """Hold the workspace's one slot: a second run of the pipeline on this checkout
    (another trigger, `make run`) waits here instead of racing the first on params.yaml,
    dvc.lock and the outputs. DVC's own lock still guards against a bare `dvc repro`."""
    from prefect.client.orchestration import get_client
    from prefect.concurrency.sync import concurrency
    from prefect.exceptions import ObjectAlreadyExists

    name = slot_name(root)
    with get_client(sync_client=True) as client:
        # Creates the limit (1 slot) the first time; without it `concurrency` would not limit.
        try:
            client.upsert_global_concurrency_limit_by_name(name, limit=1)
        except ObjectAlreadyExists:  # another run created it between the read and the create
            pass
        busy = client.read_global_concurrency_limit_by_name(name).active_slots
    if busy:
        logger.info("another pipeline run holds workspace %s (%s): waiting for it to finish", root, name)
    # strict: fail if the limit vanished; but a server blip while renewing the lease must
    # not cancel hours of training, so renewal failures only log.
    with concurrency(name, occupy=1, lease_duration=LEASE_S, strict=True,
                     raise_on_lease_renewal_failure=False):
        logger.info("holding workspace slot %s", name)
        yield
