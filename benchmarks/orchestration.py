"""What the Prefect flow costs on top of bare DVC, stage by stage.

    python -m benchmarks.orchestration [--rounds 2] [--tiny]    # --rounds 0: the no-op rerun only

In a temporary copy of the project (default config, or --tiny), the whole
pipeline runs forced and without the run cache, both through the flow (against
a Prefect server started here first, whose start-up is timed apart) and as
bare `dvc repro --single-item` per stage, alternating which goes first each
round, since this machine is shared and noisy. Prints per-stage and total
overhead in seconds (targets: total <= 5% of the bare run, no stage > 1 s) and
the no-op rerun times (targets: flow <= 5 s, `dvc repro` <= 2 s).
"""
from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from tests.support.project import ROOT, copy_project
from tests.support.project import run_env as env
from tests.support.tiny import TINY


def start_server(home: Path) -> tuple[subprocess.Popen, str, float]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/api"
    t0 = time.perf_counter()
    proc = subprocess.Popen([str(Path(sys.executable).parent / "prefect"), "server", "start", "--host",
                             "127.0.0.1", "--port", str(port), "--analytics-off"],
                            env=env(PREFECT_HOME=str(home)), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    while True:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2)
            return proc, url, time.perf_counter() - t0
        except OSError as err:
            if proc.poll() is not None:
                raise SystemExit("the Prefect server did not start") from err
            time.sleep(0.2)


def stages(root: Path) -> list[str]:
    sys.path.insert(0, str(ROOT))
    from dvc.repo import Repo

    from slimline.dvc_runner import stage_order

    with Repo(str(root)) as repo:
        return stage_order(repo)


def bare(root: Path, order: list[str]) -> dict[str, float]:
    times = {}
    for stage in order:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "dvc", "repro", "--single-item", "--force", "--no-run-cache",
                        stage], cwd=root, env=env(), check=True, capture_output=True)
        times[stage] = time.perf_counter() - t0
    return times


def flow(root: Path, api: str, order: list[str]) -> tuple[dict[str, float], float]:
    """Each stage's Prefect task wall time (start to end, publishing included) and the
    whole run's wall time, process start-up and imports included."""
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "benchmarks.orchestration", "--child", str(root)],
                         cwd=ROOT, capture_output=True, text=True, env=env(PREFECT_API_URL=api),
                         check=True).stdout
    total = time.perf_counter() - t0
    per_task = json.loads(next(line for line in out.splitlines() if line.startswith("TASKS="))[6:])
    return {s: per_task[s] for s in order}, total


def child(root: str) -> None:
    """Runs in the flow's process: the flow, then its task runs' times from the server."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.pipeline import pipeline

    state = pipeline(root=root, force=True, no_run_cache=True, push=False, key_prefix="bench",
                     return_state=True)
    fr_id = state.state_details.flow_run_id

    async def task_times() -> dict[str, float]:
        async with get_client() as client:
            runs = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[fr_id])))
        return {r.name: (r.end_time - r.start_time).total_seconds() for r in runs if r.end_time}

    print("TASKS=" + json.dumps(asyncio.run(task_times())), flush=True)


def noop(cmd: list[str], root: Path, api: str) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=root, env=env(PREFECT_API_URL=api), capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{cmd} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--tiny", action="store_true", help="the tiny test config instead of the default")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child)
    with tempfile.TemporaryDirectory() as tmp:
        root = copy_project(Path(tmp) / "proj", TINY if args.tiny else None)
        server, api, startup = start_server(Path(tmp) / "prefect")
        try:
            order = stages(root)
            subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=root, env=env(), check=True,
                           capture_output=True)  # warm: every stage has run once
            # ...and is committed, so the flow's regression gate compares like with like
            for cmd in (["git", "add", "-A"], ["git", "commit", "-qm", "warm"]):
                subprocess.run(cmd, cwd=root, env=env(), check=True, capture_output=True)
            b_runs, f_runs, f_tot = [], [], []
            for r in range(args.rounds):
                for mode in (("bare", "flow") if r % 2 == 0 else ("flow", "bare")):
                    if mode == "bare":
                        b_runs.append(bare(root, order))
                    else:
                        per_stage, total = flow(root, api, order)
                        f_runs.append(per_stage)
                        f_tot.append(total)
                    print(f"round {r + 1}: {mode} done", flush=True)
            noop_flow = min(noop([sys.executable, "-m", "flows.pipeline", "--no-push"], root, api)
                            for _ in range(3))
            noop_dvc = min(noop([sys.executable, "-m", "dvc", "repro"], root, api) for _ in range(3))
        finally:
            server.terminate()
            server.wait(timeout=30)
    med = lambda runs, s: statistics.median(x[s] for x in runs)  # noqa: E731
    print(f"\nPrefect server start-up (SQLite, until /api/health answers): {startup:.1f} s "
          f"(not counted below)")
    if b_runs:
        overhead_table(order, b_runs, f_runs, f_tot, med)
    print(f"\nno-op rerun: flow {noop_flow:.2f} s (target <= 5 s), "
          f"dvc repro {noop_dvc:.2f} s (target <= 2 s)")
    print(f"({args.rounds} rounds, medians; {'tiny' if args.tiny else 'default'} config; "
          f"this machine is shared)")


def overhead_table(order, b_runs, f_runs, f_tot, med) -> None:
    print(f"\n{'stage':<22}{'bare dvc s':>12}{'flow task s':>13}{'overhead s':>12}")
    for s in order:
        print(f"{s:<22}{med(b_runs, s):>12.2f}{med(f_runs, s):>13.2f}"
              f"{med(f_runs, s) - med(b_runs, s):>+12.2f}")
    bare_total = statistics.median(sum(x.values()) for x in b_runs)
    flow_total = statistics.median(f_tot)
    print(f"{'total (wall)':<22}{bare_total:>12.2f}{flow_total:>13.2f}{flow_total - bare_total:>+12.2f}"
          f"   overhead {100 * (flow_total - bare_total) / bare_total:+.1f}% (target <= 5%)")


if __name__ == "__main__":
    main()
