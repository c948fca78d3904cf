"""`slimline check [PARAMS_FILE]`: everything that can be checked before any work.

1. params.yaml against the schema (slimline.params), every section, and the runtimes that
   evaluate.runtimes names are installed (a GPU one needs `make setup-gpu`);
2. the files it brings (data, a python: model, weights) are deps in dvc.yaml;
3. the models it asks for build, run, export to ONNX and trace for pruning (slimline.preflight;
   cached, and skipped for the built-in cnn).

`make run` and the flow run it first. Its own module, not the schema's: the stages import
the schema, and must not depend on (or rerun for) the preflight's code.

`--write-deps` (what `make run` passes) adds the files params.yaml brings to dvc.yaml and
prints the change, so pointing data.path at a new folder needs no second command. A
deployment's run and a plain `dvc repro` never edit dvc.yaml: they refuse, naming this fix.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from slimline.params import ParamsError, load_params, parse_params
from slimline.project import importable

FIX = "Run `slimline check --write-deps` (or `python -m slimline.codedeps --write`)"


def undeclared_files(raw: dict, root: Path) -> dict[str, list[str]]:
    """{stage: files params bring that dvc.yaml does not list as its deps}, stages with none left out."""
    dvc_yaml = root / "dvc.yaml"
    if not dvc_yaml.exists():
        return {}
    from slimline.codedeps import stage_modules, undeclared

    missing = {s: undeclared(s, raw, dvc_yaml) for s in stage_modules(dvc_yaml)}
    return {s: m for s, m in missing.items() if m}


def declare_files(raw: dict, root: Path) -> list[str]:
    """Add the files params bring (data, a python: model's source, weights) to dvc.yaml's
    generated deps; returns one line per stage that changed, [] when none did (or when the
    params are invalid: `problems` names what is wrong, and dvc.yaml is left alone)."""
    try:
        parse_params(raw)
    except ParamsError:
        return []
    missing = undeclared_files(raw, root)
    if not missing:
        return []
    from slimline.codedeps import write

    write(root / "dvc.yaml", root / "params.yaml", raw=raw)
    return [f"dvc.yaml: {stage} now depends on {', '.join(files)}" for stage, files in missing.items()]


def problems(raw: dict, root: Path, source: str = "params.yaml") -> str | None:
    """What stops a run of these params in the project at root, as one message; None if
    nothing does. The flow calls it too, with its overrides applied."""
    try:
        params = parse_params(raw, source)
    except ParamsError as err:
        return str(err)
    from slimline.runtime.registry import missing as runtime_missing

    lacking = [why for r in params.evaluate.runtimes if (why := runtime_missing(r))]
    if lacking:  # before any work: evaluate would stop on it after hours of training
        return "evaluate.runtimes: " + "; ".join(lacking)
    missing = undeclared_files(raw, root)  # the files params bring must be stage deps
    if missing:
        return (f"dvc.yaml does not list the files {source} brings as deps: "
                + "; ".join(f"{s}: {', '.join(m)}" for s, m in missing.items()) + f". {FIX}")
    # The models build here as in a stage, whose working directory is the project root.
    importable(root)
    from slimline.preflight import check_models  # your own models: build, forward, export, prune graph

    failed = check_models(raw, root)
    if failed:
        return "model preflight failed:\n" + "\n".join(f"  - {p}" for p in failed)
    return None


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="slimline check", description="Validate params.yaml, the deps of "
                                "the files it brings and the models it asks for; exit 2 if anything fails.")
    p.add_argument("params", nargs="?", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument("--write-deps", action="store_true",
                   help="add the files params brings (data, model sources, weights) to dvc.yaml's deps")
    args = p.parse_args(argv)
    path = args.params
    try:
        load_params(path)  # a missing or unreadable file, named
    except ParamsError as err:
        print(err, file=sys.stderr)
        return 2
    raw, root = yaml.safe_load(Path(path).read_text()) or {}, Path(path).resolve().parent
    if args.write_deps:
        for line in declare_files(raw, root):
            print(line)
    message = problems(raw, root, path)
    if message:
        print(message, file=sys.stderr)
        return 2
    print(f"{path}: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
