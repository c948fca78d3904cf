"""The toy project: the real project (flows, slimline, prefect.yaml, params.yaml) with each
dvc.yaml stage's command swapped for a toy of a fraction of a second (toy_stage.py).

The plumbing tests (DVC's run cache and restores, signals, the S3 remote, the gate,
deployments, workers, crash detection) check what the flow and DVC do around the stages,
not what the stages compute; the real ML stages are tested end to end by the tiny build.
The toy dvc.yaml is made from the real one, so stage names, params, deps on other stages'
outputs, outs, metrics and plots stay as they are: only the commands and the code deps
differ.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

from slimline.evaluation import incumbent
from tests.support.background import build_main
from tests.support.project import commit, copy_project, run_env

MODULE = "tests.support.toy_stage"
CODE = ("tasks/", "slimline/", "flows/")
SNAPSHOT = "tests/support/toy_snapshot"
_GENERATED = "__generated__"  # where codedeps' mark goes: `codedeps --write` works on the toy too
# As the tiny config, where it matters to the plumbing: few epochs, quick evaluate settings.
PARAMS = {"train": {"epochs": 2, "num_threads": 1}, "evaluate": {"repeats": 20, "warmup": 2}}


def toy_stages(real: dict) -> dict:
    """The real dvc.yaml's stages with toy commands, and the toy's code (its import closure,
    as slimline.codedeps finds it) as their generated deps."""
    from slimline.codedeps import dvc_deps

    code = dvc_deps(MODULE)
    out = {}
    for name, stage in real["stages"].items():
        body = dict(stage.get("do") or stage)
        body["cmd"] = f"python -m {MODULE} {name}" + (" ${item}" if "do" in stage else "")
        authored = [d for d in body.get("deps", []) if not d.startswith(CODE)]  # data, models
        body["deps"] = authored + [SNAPSHOT, _GENERATED, *code]
        out[name] = {"foreach": stage["foreach"], "do": body} if "do" in stage else body
    return {"stages": out}


def write_toy_dvc_yaml(root: Path) -> None:
    from slimline.codedeps import MARK

    real = yaml.safe_load((root / "dvc.yaml").read_text())
    text = yaml.safe_dump(toy_stages(real), sort_keys=False)
    text = "\n".join(line.replace(f"- {_GENERATED}", MARK) for line in text.splitlines())
    (root / "dvc.yaml").write_text(f"# The toy project's stages (tests/support/toy.py)\n{text}\n")
    (root / "dvc.lock").unlink(missing_ok=True)


def build_toy(dest: Path) -> Path:
    """A toy project after one `dvc repro`, committed: the plumbing tests' starting point."""
    import subprocess

    root = copy_project(dest, PARAMS)
    write_toy_dvc_yaml(root)
    # The team accepted what the toy's evaluate ships (its snapshot's choice), as after a
    # run whose gate passed: a flow run that ships it again leaves the file as it is.
    shipped = json.loads((root / SNAPSHOT / "reports" / "evaluate.json").read_text())["selected"]
    incumbent.write(shipped, root / incumbent.PATH)
    repro = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=root, env=run_env(),
                           capture_output=True, text=True)
    if repro.returncode:
        raise RuntimeError(f"dvc repro of the toy project failed:\n{(repro.stdout + repro.stderr)[-3000:]}")
    commit(root, "toy repro")
    return root


if __name__ == "__main__":  # python -m tests.support.toy build DEST (a background build)
    build_main(sys.argv[1:], build_toy, "python -m tests.support.toy build DEST")
