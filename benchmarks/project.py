"""A benchmark's private copy of the project, as a fresh clone would see it."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def copy_project(dest: Path, params: dict | None = None) -> Path:
    """Copy the tracked and untracked-but-not-ignored files into dest, update params.yaml
    sections with `params` ({section: {key: value}}), and commit it all in a new repo."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        if (ROOT / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest / rel)
    if params:
        raw = yaml.safe_load((dest / "params.yaml").read_text())
        for section, values in params.items():
            raw[section].update(values)
        (dest / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    for cmd in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"],
                ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.invalid",
                 "commit", "-qm", "benchmark copy"]):
        subprocess.run(cmd, cwd=dest, check=True, capture_output=True)
    return dest
