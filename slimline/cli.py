"""`slimline <command> ...`: one entry point for what users run by hand.

    slimline check [params.yaml]      validate params, deps and models (torch only for your own models)
    slimline run [-S key=value ...]   the pipeline flow (what `make run` runs)
    slimline search [--apply-best]    the structure search
    slimline deploy                   register work pools and deployments
    slimline incumbent [--reset]      show or reset the variant a challenger must clearly beat
    slimline predict PATH...          classify images with the ship bundle
    slimline s3 bootstrap --bucket B  an S3 bucket as the DVC remote

Each command is its module's own CLI (`python -m <module>` works the same); the
module is imported only when its command runs, so `slimline check` stays quick.
Every command runs with the project root (the folder holding dvc.yaml) first on sys.path,
as the stages do, so a model module kept in the project imports here too.
"""
from __future__ import annotations

import importlib
import sys

from slimline.project import find_root, importable

COMMANDS = {  # command -> (module with main(argv), one-line help)
    "check": ("slimline.check", "validate params.yaml, its files' dvc.yaml deps and the models it asks for"),
    "run": ("flows.pipeline", "run the pipeline flow: each stage through DVC, reports to Prefect"),
    "search": ("flows.search", "train and rank the candidate structures of params.yaml's search section"),
    "deploy": ("flows.deploy", "create the work pools, automations and deployments of prefect.yaml"),
    "incumbent": ("slimline.evaluation.incumbent", "show or reset the variant evaluate keeps unless beaten"),
    "predict": ("slimline.predict", "classify image files with the ship bundle (models/ship)"),
    "s3": ("slimline.s3", "bootstrap an S3 bucket as the DVC remote"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    rows = "\n".join(f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items())
    return (f"usage: slimline <command> [args...]\n\ncommands:\n{rows}\n\n"
            f"`slimline <command> --help` for its options.")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv[0] not in COMMANDS:
        print(f"slimline: unknown command {argv[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    root = find_root()
    if root is not None:
        importable(root)
    module, _ = COMMANDS[argv[0]]
    return importlib.import_module(module).main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
