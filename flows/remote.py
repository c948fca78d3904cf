"""The run's record and exchange: `dvc exp save`, `dvc push`, `dvc exp push`.

A deployment run is saved as a DVC experiment of the commit it started from,
so every nightly result shows in `dvc exp show` and can be restored with
`dvc exp apply`; the tracked branch itself is never committed to or pushed.
"""
from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.errors import retry_transient
from slimline.dvc_runner import is_transient, stage_env
from slimline.errors import StageFailed, TransientFailure
from slimline.repo import dvc_remote, git_remote, slug
from slimline.s3 import explain_dvc_failure


@dataclass(frozen=True)
class Remote:
    name: str
    url: str


def remote_for(root: Path, logger) -> Remote | None:
    """The default DVC remote, or None (logged once: nothing will be pulled or pushed)."""
    from dvc.repo import Repo

    name = dvc_remote(root)
    if name is None:
        return None
    with Repo(str(root)) as repo:
        url = repo.config["remote"][name].get("url", "")
    logger.info("DVC remote '%s' (%s): stages pull what they need; outputs are pushed at the end",
                name, url)
    return Remote(name, url)


def _dvc(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, env=stage_env(),
                          capture_output=True, text=True)


def experiment_name(prefix: str) -> str:
    from prefect.runtime import flow_run

    # Git ref names: letters, digits and dashes are always safe.
    raw = f"{prefix}-{flow_run.name or 'run'}"
    return slug(raw, lower=False)


@task(task_run_name="dvc exp save", cache_policy=NO_CACHE)
def save_run(root: Path, prefix: str, stages: list[str]) -> dict:
    """Record the workspace (params, dvc.lock, metrics) as an experiment of HEAD.
    `stages`: those whose outputs are here (a targeted run, or one that left outputs
    on the remote, has no others to cache, and `dvc exp save` would fail on them)."""
    name = experiment_name(prefix)
    proc = _dvc(root, "exp", "save", "--name", name, "--force", *stages)
    if proc.returncode:
        raise StageFailed(f"dvc exp save failed: {proc.stderr.strip() or proc.stdout.strip()}")
    get_run_logger().info("saved this run as DVC experiment '%s' (dvc exp show; dvc exp apply %s)",
                          name, name)
    return {"stage": "dvc exp save", "outcome": f"experiment {name}", "seconds": 0.0, "experiment": name}


# 3 attempts, waiting 5 s then 20 s, only when the remote is unreachable; within
# an attempt botocore tries each request at most twice (AWS_MAX_ATTEMPTS from
# slimline/s3.py bounded_env: 2 connects per object when the port refuses).
# Bad credentials or a corrupt object fail at once: waiting does not fix them.
@task(task_run_name="dvc push", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[5, 20],
      retry_condition_fn=retry_transient)
def push_outputs(root: str, remote: Remote, experiment: str | None = None) -> dict:
    logger = get_run_logger()
    steps = [("push", "--remote", remote.name)]
    origin = git_remote(Path(root))
    if experiment and origin:
        # --no-cache: the data went with `dvc push` just before.
        steps.append(("exp", "push", "--no-cache", origin, experiment))
    elif experiment:
        logger.info("no git remote: experiment '%s' stays in this clone", experiment)
    for args in steps:
        proc = _dvc(Path(root), *args)
        out = (proc.stdout + proc.stderr).strip()
        for line in out.splitlines()[-20:]:
            logger.info("[dvc %s] %s", args[0] if args[0] == "push" else "exp push", line)
        if proc.returncode:
            hint = explain_dvc_failure(out, remote.url, remote.name) or out.splitlines()[-1:]
            msg = f"`dvc {' '.join(args)}` failed: {hint if isinstance(hint, str) else ' '.join(hint)}"
            raise (TransientFailure if is_transient(out) else StageFailed)(
                msg + "\nThe local outputs and DVC cache are untouched; rerun to push them.")
    return {"stage": "dvc push", "outcome": f"pushed to {remote.url}", "seconds": 0.0}



def upload_evaluate(root: Path, remote: Remote | None, logger) -> dict[str, str] | None:
    """Upload the evaluate report and charts under the bucket's reports/ prefix and
    return presigned links (name -> URL); None without an S3 remote or on failure
    (the run's results are already safe locally; the push step reports the remote)."""
    from prefect.runtime import flow_run

    from slimline.s3 import remote_config, upload_reports

    cfg = remote_config(root, remote.name) if remote else None
    if cfg is None or not cfg.is_s3:
        return None
    files = [p for p in (root / "reports" / n for n in ("evaluate.md", "evaluate.json",
                                                        "pareto_latency.png", "pareto_bytes.png"))
             if p.exists()]
    try:
        return upload_reports(root, files, flow_run.id or "local", cfg)
    except Exception as err:  # noqa: BLE001 - S3Error, or a botocore config error: the results stand anyway
        logger.warning("could not upload the evaluate report: %s", err)
        return None
