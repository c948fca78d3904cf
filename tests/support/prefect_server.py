"""A real `prefect server start` on a free loopback port (SQLite in a temp folder), and
reading what flows left on it: artifacts and task runs."""
from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from slimline.repo import stop_group
from slimline.stage import die_with_parent
from tests.support.project import run_env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PrefectServer:
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
            except OSError as err:
                if (self.proc and self.proc.poll() is not None) or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"prefect server did not start:\n"
                                       f"{(self.home / 'server.log').read_text()[-3000:]}") from err
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
    # A run queued behind a deployment's single slot retries every 30 s by default; the
    # tests check that it waits and then runs, not how long the server's poll interval is.
    env = server.env(PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS="3")
    with (home / "server.log").open("w") as log:
        server.proc = subprocess.Popen([cli, "server", "start", "--host", "127.0.0.1", "--port", port,
                                        "--analytics-off"], env=env, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True,
                                       preexec_fn=die_with_parent)
    return server


def client_call(fn):
    """`await fn(client)` against the server PREFECT_API_URL points at."""
    from prefect.client.orchestration import get_client

    async def go():
        async with get_client() as client:
            return await fn(client)

    return asyncio.run(go())


def artifacts(flow_run_id) -> dict:
    """{key: artifact} of one flow run."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    found = client_call(lambda c: c.read_artifacts(
        artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))))
    return {a.key: a for a in found}


def task_runs(flow_run_id) -> dict:
    """{name: task run} of one flow run."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    found = client_call(lambda c: c.read_task_runs(
        flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))))
    return {t.name: t for t in found}
