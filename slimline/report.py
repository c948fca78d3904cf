"""A stage's report files, and the run record a structure search keeps.

Reports come in two kinds, because DVC hashes what it tracks:
- reports/<stage>.json: deterministic results (DVC metrics; identical reruns
  give identical bytes, so dvc.lock stays put);
- reports/<stage>.run.json: this run's timings, host and versions (untracked).
reports/<stage>.md is the human report combining both (untracked).

Nothing here imports torch: a stage that trains has imported it already, and a
stage (or a test's stand-in) that does not should not pay for loading it.
"""
from __future__ import annotations

import hashlib
import os
import platform
import shutil
import socket
import sys
from pathlib import Path

from slimline.io import write_json, write_text
from slimline.numerics import PROMISE, cpu_info

REPORTS = Path("reports")
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
    """Host, versions and CPU of this run. Torch's version, threads and GPU only when this
    process has imported torch: every stage that uses it has, and one that has not, does
    not use it."""
    torch = sys.modules.get("torch")
    cpu = cpu_info()
    info = {"host": socket.gethostname(), "python": platform.python_version()}
    if torch is not None:
        info["torch"] = torch.__version__
    info.update({"cpu": cpu["model"], "cpu_vendor": cpu["vendor"], "cpu_isa": " ".join(cpu["isa"])})
    if torch is not None:
        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return info


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


def keep_run_record(stage: str) -> None:
    """Copy reports/<stage>.run.json to $SLIMLINE_RUN_RECORD_DIR when that is set.

    flows/search.py sets it for the DVC experiments it starts: DVC runs those in a
    throwaway copy of the repository and commits only tracked files, so the
    untracked run record (train time, ORT latency) would vanish with the copy.
    """
    folder = os.environ.get("SLIMLINE_RUN_RECORD_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPORTS / f"{stage}.run.json", Path(folder) / f"{stage}.run.json")
