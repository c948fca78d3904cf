"""A private copy of the project, as a fresh clone would see it, and the commands the tests
run in one (git, dvc, a stage), with the environment they need."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from slimline.repo import child_env, git

ROOT = Path(__file__).resolve().parents[2]

# Commits in copies need an identity; a machine may have none configured.
IDENTITY = {"GIT_AUTHOR_NAME": "slimline", "GIT_AUTHOR_EMAIL": "slimline@example.invalid",
            "GIT_COMMITTER_NAME": "slimline", "GIT_COMMITTER_EMAIL": "slimline@example.invalid"}


def run_env(**extra: str) -> dict:
    """Environment for dvc, stage and git subprocesses of a copy."""
    return child_env(**IDENTITY, **extra)


def update_params(root: Path, overrides: dict) -> None:
    """Update params.yaml sections with `overrides` ({section: {key: value}})."""
    path = root / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for section, values in overrides.items():
        params.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def copy_project(dest: Path, params: dict | None = None) -> Path:
    """Copy the tracked and untracked-but-not-ignored files into dest, apply `params`
    (see update_params), and commit it all in a new repository."""
    listed = git("ls-files", "-z", "--cached", "--others", "--exclude-standard", cwd=ROOT)
    for rel in filter(None, listed.split("\0")):
        if (ROOT / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest / rel)
    if params:
        update_params(dest, params)
    commit(dest, "copy", init=True)
    return dest


def commit(root: Path, message: str, init: bool = False) -> None:
    """`git add -A` and commit everything in root (a new repository first with init)."""
    steps = ([["init", "-q", "-b", "main"]] if init else []) + [["add", "-A"], ["commit", "-qm", message]]
    for cmd in steps:
        subprocess.run(["git", *cmd], cwd=root, env=run_env(), check=True, capture_output=True)


def copy_tree(src: Path, dest: Path) -> Path:
    """A private copy of a project (git, DVC cache and outputs), without DVC's lock and
    temporary files, which another process's dvc may be writing."""
    shutil.copytree(src, dest, symlinks=True,
                    ignore=lambda d, names: ["tmp"] if Path(d).name == ".dvc" else [])
    return dest


def tree_digest(path: Path) -> dict[str, bytes]:
    """Every file's bytes under path, for 'untouched' assertions."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def sh(cmd: list[str], cwd: Path, check: bool = True, **env: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env={**run_env(), **env}, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def dvc(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    return sh([sys.executable, "-m", "dvc", *args], cwd, check)


def lock_outs(root: Path) -> dict[str, str]:
    """{output path: md5} of every stage in root's dvc.lock."""
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    return {o["path"]: o["md5"] for st in lock["stages"].values() for o in st.get("outs", [])}
