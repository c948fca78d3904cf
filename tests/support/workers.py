"""A team's repository deployed on a Prefect server, and real process workers running its
deployments: start a worker on a pool, trigger a deployment, wait for a run's state."""
from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.support.prefect_server import PrefectServer, client_call
from tests.support.processes import kill_tree


@dataclass
class Team:
    """`origin` plays the team's git repository (workers clone it into base/workspaces,
    one checkout per deployment, and share its DVC cache as workers on one machine do);
    the workers talk to `server` and write their logs to base/worker-POOL-*.log."""
    server: PrefectServer
    origin: Path
    base: Path
    flow: str = "slimline-pipeline"  # the flow whose deployments trigger() names

    def worker_env(self) -> dict:
        # Prefect keeps each run's supervisor files in a temporary folder that a killed
        # worker cannot remove: keep them in the test's folder, not the machine's /tmp.
        (self.base / "tmp").mkdir(exist_ok=True)
        return self.server.env(SLIMLINE_REPO=str(self.origin), TMPDIR=str(self.base / "tmp"),
                               SLIMLINE_WORKSPACES=str(self.base / "workspaces"),
                               SLIMLINE_DVC_CACHE=str(self.origin / ".dvc" / "cache"),
                               PREFECT_FLOWS_HEARTBEAT_FREQUENCY="30",
                               # a queued run waits for the next poll (10 s by default),
                               # and with it the test and one of the two pytest workers
                               PREFECT_WORKER_QUERY_SECONDS="2")

    def workspace(self, deployment: str) -> Path:
        return self.base / "workspaces" / deployment

    def start_worker(self, pool: str, once: bool = False) -> subprocess.Popen:
        """`prefect worker start` on `pool` (process type); `once`: take one run and exit.
        Stop it with kill_tree (tests.support.processes)."""
        cli = str(Path(sys.executable).parent / "prefect")
        log = (self.base / f"worker-{pool}-{time.monotonic_ns()}.log").open("w")
        with log:
            return subprocess.Popen([cli, "worker", "start", "--pool", pool, "--type", "process",
                                     *(["--run-once"] if once else [])],
                                    cwd=self.base, env=self.worker_env(), stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)

    def worker_logs(self, pool: str) -> list[Path]:
        """The logs of the workers started on `pool`, oldest first."""
        return sorted(self.base.glob(f"worker-{pool}-*.log"), key=lambda p: int(p.stem.rsplit("-", 1)[1]))

    def trigger(self, deployment: str, **parameters):
        """A new run of the deployment, returned at once (no worker waited for)."""
        from prefect.deployments import run_deployment

        return run_deployment(f"{self.flow}/{deployment}", parameters=parameters, timeout=0)

    def run_once(self, deployment: str, pool: str, what: str, **parameters):
        """Trigger a deployment, let a `--run-once` worker execute it, return the finished run."""
        run = self.trigger(deployment, **parameters)
        worker = self.start_worker(pool, once=True)
        try:
            worker.wait(timeout=600)
        finally:
            if worker.poll() is None:  # an exited worker's pid may belong to another process now
                kill_tree(worker)
        return wait_for(run.id, finished, 30, what)


def wait_for(flow_run_id, done, timeout_s: float, what: str):
    """Poll the flow run until done(run); fail naming `what` after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        run = client_call(lambda c: c.read_flow_run(flow_run_id))
        if done(run):
            return run
        assert time.monotonic() < deadline, f"{what}: still {run.state.name} after {timeout_s} s"
        time.sleep(1)


def finished(run) -> bool:
    return run.state.is_final()


def state_names(flow_run_id) -> list[str]:
    """The names of every state the flow run went through, in order."""
    return [s.name for s in client_call(lambda c: c.read_flow_run_states(flow_run_id))]
