"""`slimline check [PARAMS_FILE]`: everything that can be checked before any work.

1. params.yaml against the schema (slimline.params), every section;
2. the files it brings (data, a python: model, weights) are deps in dvc.yaml;
3. the models it asks for build, run, export to ONNX and trace for pruning (slimline.preflight;
   cached, and skipped for the built-in cnn).

`make run` and the flow run it first. Its own module, not the schema's: the stages import
the schema, and must not depend on (or rerun for) the preflight's code.
"""
from __future__ import annotations

import sys
from pathlib import Path

import yaml

from slimline.params import ParamsError, load_params, parse_params


def problems(raw: dict, root: Path, source: str = "params.yaml") -> str | None:
    """What stops a run of these params in the project at root, as one message; None if
    nothing does. The flow calls it too, with its overrides applied."""
    try:
        parse_params(raw, source)
    except ParamsError as err:
        return str(err)
    dvc_yaml = root / "dvc.yaml"
    if dvc_yaml.exists():  # the files params bring (data, python: models, weights) must be stage deps
        from slimline.codedeps import stage_modules, undeclared

        missing = {s: undeclared(s, raw, dvc_yaml) for s in stage_modules(dvc_yaml)}
        missing = {s: m for s, m in missing.items() if m}
        if missing:
            return (f"dvc.yaml does not list the files {source} brings as deps: "
                    + "; ".join(f"{s}: {', '.join(m)}" for s, m in missing.items())
                    + ". Run `python -m slimline.codedeps --write`")
    from slimline.preflight import check_models  # your own models: build, forward, export, prune graph

    failed = check_models(raw, root)
    if failed:
        return "model preflight failed:\n" + "\n".join(f"  - {p}" for p in failed)
    return None


def main(argv: list[str]) -> int:
    if argv and argv[0] in ("-h", "--help"):
        print("usage: slimline check [PARAMS_FILE]  (default params.yaml): validate it, exit 2 if invalid")
        return 0
    path = argv[0] if argv else "params.yaml"
    try:
        load_params(path)  # a missing or unreadable file, named
    except ParamsError as err:
        print(err, file=sys.stderr)
        return 2
    message = problems(yaml.safe_load(Path(path).read_text()) or {}, Path(path).parent, path)
    if message:
        print(message, file=sys.stderr)
        return 2
    print(f"{path}: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
