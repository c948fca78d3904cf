"""What every stage module shares: the CLI wrapper and the report writer.

Reports come in two kinds, because DVC hashes what it tracks:
- reports/<stage>.json: deterministic results (DVC metrics; identical reruns
  give identical bytes, so dvc.lock stays put);
- reports/<stage>.run.json: this run's timings, host and versions (untracked).
reports/<stage>.md is the human report combining both (untracked).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import platform
import socket
import sys
from pathlib import Path
from typing import Callable

from slimline.errors import StageError
from slimline.io import write_json, write_text
from slimline.numerics import PROMISE, cpu_info
from slimline.params import Params, ParamsError, load_params

# In a method's output folder when it could not apply (its report says why): later stages skip it.
NOT_APPLICABLE = "not_applicable.json"
# In a structured-pruned model's folder: prune's per-layer table, which quantize reports.
LAYERS_FILE = "layers.json"
REPORTS = Path("reports")
RESUME_ROOT = Path(".slimline/resume")  # ignored by git, never a DVC out
STAMP = "report-json-sha256: "


def markdown_table(rows: list[dict]) -> str:
    if not rows:
        return ""
    cols = list(rows[0])
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |")
    return "\n".join(out)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def run_info() -> dict:
    import torch

    cpu = cpu_info()
    return {"host": socket.gethostname(), "python": platform.python_version(),
            "torch": torch.__version__, "cpu": cpu["model"], "cpu_vendor": cpu["vendor"],
            "cpu_isa": " ".join(cpu["isa"]), "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def write_report(stage: str, results: dict, markdown: str, run: dict | None = None) -> None:
    """results -> reports/<stage>.json (tracked), run -> .run.json, both -> .md."""
    write_json(REPORTS / f"{stage}.json", results)
    run = {**run_info(), **(run or {})}
    write_json(REPORTS / f"{stage}.run.json", run)
    run_rows = "\n".join(f"- {k}: {_fmt(v)}" for k, v in sorted(run.items()))
    if "numerics" in run:  # said whatever the mode: fast-mode users must not assume it
        run_rows += f"\n\nNumerics: `{run['numerics']}`. {PROMISE}"
    # The stamp ties this (untracked) markdown to the (tracked) JSON it describes, so a
    # reader can tell when DVC restored a different JSON underneath it.
    stamp = hashlib.sha256((REPORTS / f"{stage}.json").read_bytes()).hexdigest()
    write_text(REPORTS / f"{stage}.md", f"{markdown.rstrip()}\n\n### This run\n{run_rows}\n\n"
                                        f"<!-- {STAMP}{stamp} -->\n")


def resume_dir(stage: str, params: dict, dep_paths: list[str | Path]) -> Path:
    """A checkpoint folder keyed by the stage's params and the content of its deps,
    so that a changed config or changed data never resumes a stale run."""
    h = hashlib.sha256(json.dumps(params, sort_keys=True).encode())
    for dep in dep_paths:
        dep = Path(dep)
        files = sorted(p for p in dep.rglob("*")
                       if p.is_file() and "__pycache__" not in p.parts) if dep.is_dir() else [dep]
        for f in files:
            h.update(str(f).encode())
            h.update(f.read_bytes())
    return RESUME_ROOT / f"{stage}-{h.hexdigest()[:16]}"


def die_with_parent() -> None:
    """Linux: get SIGKILL when the parent process dies. A stage whose runner (dvc, or
    the flow above it) was killed would otherwise train on as an orphan, holding
    DVC's lock so that the rerun cannot start. The setting survives exec."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def check_declared(stage: str, params_path: str | Path, dvc_yaml: Path = Path("dvc.yaml")) -> None:
    """Refuse to run when params.yaml brings a file (a python: model, weights) that dvc.yaml
    does not list as this stage's dep: editing it would not rerun the stage."""
    if not dvc_yaml.exists():  # run by hand outside a project
        return
    from slimline.codedeps import read_params, undeclared

    missing = undeclared(stage, read_params(Path(params_path)), dvc_yaml)
    if missing:
        raise StageError(f"dvc.yaml does not list {', '.join(missing)} as deps of stage {stage}, so "
                         f"editing them would not rerun it: run `python -m slimline.codedeps --write`")


def main(stage: str, body: Callable[[Params, argparse.Namespace], None],
         add_args: Callable[[argparse.ArgumentParser], None] | None = None,
         sections: tuple[str, ...] | None = None) -> None:
    """Parse args, validate the params sections the stage reads (its dvc.yaml `params`;
    None: the whole file), run body; expected errors exit non-zero with one readable message instead of a
    traceback."""
    parser = argparse.ArgumentParser(prog=f"python -m tasks.{stage}")
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    if add_args:
        add_args(parser)
    args = parser.parse_args()
    die_with_parent()
    try:
        params = load_params(args.params, sections)
        check_declared(stage, args.params)
        body(params, args)
    except (ParamsError, StageError, FileNotFoundError, FloatingPointError) as err:
        # Expected failures carry a readable message that names the fix; a
        # traceback would only bury it. Anything else is a bug and keeps its traceback.
        print(f"ERROR [{stage}]: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
