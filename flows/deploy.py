"""Register Slimline on a Prefect server: work pools, the crash automation, deployments.

    python -m flows.deploy [--root DIR]        (what `make deploy` runs)

Idempotent: the work pools prefect.yaml's deployments name (process pools) and the
automation are created only when missing, and `prefect deploy --all` updates the
deployments in prefect.yaml in place.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
AUTOMATIONS = Path("infra/automations/crash-unresponsive-runs.yaml")


def prefect_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "prefect"
    return subprocess.run([str(exe), "--no-prompt", *args], cwd=cwd, capture_output=True, text=True)


def deploy(root: Path = ROOT) -> dict:
    import asyncio

    from prefect.client.orchestration import get_client

    async def register() -> tuple[list[str], list[str]]:
        async with get_client() as client:
            return await ensure_pools(client, pool_names(root)), await ensure_automations(client, root)

    pools, autos = asyncio.run(register())
    proc = prefect_cli("deploy", "--all", cwd=root)
    if proc.returncode:
        raise RuntimeError(f"prefect deploy failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return {"pools_created": pools, "automations_created": autos}


def pool_names(root: Path) -> list[str]:
    """The work pools prefect.yaml's deployments run on (`make worker POOL=<name>` serves
    one), sorted: renaming a pool there is all it takes."""
    spec = yaml.safe_load((root / "prefect.yaml").read_text())["deployments"]
    return sorted({d["work_pool"]["name"] for d in spec})


async def ensure_pools(client, names: list[str]) -> list[str]:
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    created = []
    for name in names:
        try:
            await client.read_work_pool(name)
        except ObjectNotFound:
            await client.create_work_pool(WorkPoolCreate(name=name, type="process"))
            created.append(name)
    return created


async def ensure_automations(client, root: Path) -> list[str]:
    from prefect.events.schemas.automations import AutomationCore

    spec = yaml.safe_load((root / AUTOMATIONS).read_text())["automations"]
    existing = {a.name for a in await client.read_automations()}
    created = []
    for item in spec:
        if item["name"] not in existing:
            await client.create_automation(AutomationCore.model_validate(item))
            created.append(item["name"])
    return created


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flows.deploy", description=__doc__.split("\n")[0])
    p.add_argument("--root", type=Path, default=ROOT, help="project root holding prefect.yaml")
    args = p.parse_args(argv)
    try:
        result = deploy(args.root.resolve())
    except Exception as err:  # noqa: BLE001 - any failure to deploy is reported, with the likely cause
        print(f"deploy failed: {err}\nIs a Prefect server running at PREFECT_API_URL? (make server)",
              file=sys.stderr)
        return 1
    print(f"work pools created: {result['pools_created'] or 'none (all existed)'}")
    print(f"automations created: {result['automations_created'] or 'none (all existed)'}")
    spec = yaml.safe_load((args.root / "prefect.yaml").read_text())["deployments"]
    print("deployments registered from prefect.yaml: "
          + ", ".join(f"{d['name']} (pool {d['work_pool']['name']})" for d in spec))
    print("start a worker: make worker POOL=gpu   (one per GPU: CUDA_VISIBLE_DEVICES=N make worker POOL=gpu)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
