"""What ruamel.yaml's C parser saves each dvc command on this project.

    python -m benchmarks.dvc_parse [--rounds 6]

DVC reads dvc.yaml, dvc.lock and params.yaml with ruamel's "safe" loader, which parses in C
only when ruamel.yaml.clib is installed (pyproject.toml). In a temporary copy of the
project, this runs `dvc status` (the whole graph: every stage's deps and the lock) and
`dvc repro --single-item prepare` with the C parser and with it hidden, alternating
which goes first each round, since this machine is shared and noisy. It prints the
median CPU seconds (user + system) of each and their ratio.
"""
from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.support.project import copy_project, dvc, run_env

# `python -c HIDE dvc ...` runs dvc as `python -m dvc` does, with the C parser unimportable.
HIDE = "import runpy, sys; sys.modules['_ruamel_yaml'] = None; sys.argv[0] = 'dvc'; " \
       "runpy.run_module('dvc', run_name='__main__')"
COMMANDS = {"dvc status": ["status"],
            "dvc repro --single-item prepare": ["repro", "--single-item", "prepare"]}


def cpu_seconds(args: list[str], root: Path, parser: str) -> float:
    """CPU seconds of one dvc command run to its end."""
    head = ["-m", "dvc"] if parser == "C" else ["-c", HIDE]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, *head, *args], cwd=root, env=run_env(), check=True,
                   capture_output=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=6)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = copy_project(Path(tmp) / "project")
        dvc("repro", "prepare", cwd=root)  # then the repro below reruns nothing
        times = {(name, parser): [] for name in COMMANDS for parser in ("C", "pure")}
        for r in range(args.rounds):
            order = ("C", "pure") if r % 2 == 0 else ("pure", "C")
            for name, cmd in COMMANDS.items():
                for parser in order:
                    times[name, parser].append(cpu_seconds(cmd, root, parser))
    print(f"median of {args.rounds} rounds\n")
    print("| command | C parser (CPU s) | pure Python (CPU s) | C / pure |")
    print("|---|---|---|---|")
    for name in COMMANDS:
        c, pure = statistics.median(times[name, "C"]), statistics.median(times[name, "pure"])
        print(f"| `{name}` | {c:.2f} | {pure:.2f} | {c / pure:.2f} |")


if __name__ == "__main__":
    main()
