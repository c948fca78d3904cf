"""Turn each stage's reports/<stage>.json and .md into Prefect artifacts."""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from tasks.stage import STAMP, markdown_table


def artifact_key(prefix: str, stage: str, kind: str) -> str:
    # Artifact keys allow lowercase letters, digits and dashes only.
    raw = f"{prefix}-{stage}-{kind}" if prefix else f"{stage}-{kind}"
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", raw.lower())).strip("-")


def flatten(d: dict, prefix: str = "") -> dict:
    """Scalar leaves of a nested report as dotted keys (lists are left out)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        elif isinstance(v, (int, float, str, bool)) or v is None:
            out[key] = v
    return out


def md_matches(md_path: Path, json_path: Path) -> bool:
    """Whether the markdown report was written from this exact JSON (see tasks.stage.write_report)."""
    digest = hashlib.sha256(json_path.read_bytes()).hexdigest()
    return f"{STAMP}{digest}" in md_path.read_text()


def report_stem(stage: str) -> str:
    """reports/<stem>.json of a stage: `prune@layer` (a foreach item) writes prune_layer."""
    return stage.split(":")[-1].replace("@", "_")


def report_table(report: dict) -> list[dict]:
    """A report's table artifact: its per-variant rows if it has them, else its scalar metrics."""
    rows = report.get("variants")
    if isinstance(rows, list) and rows and all(isinstance(r, dict) for r in rows):
        return [{k: v for k, v in r.items() if isinstance(v, (int, float, str, bool)) or v is None}
                for r in rows]
    return [{"metric": k, "value": v} for k, v in flatten(report).items()]


def publish_stage(root: Path, stage: str, outcome: str, seconds: float, prefix: str = "",
                  errors: list[str] | None = None) -> None:
    reports = root / "reports"
    stem = report_stem(stage)
    md_path, json_path = reports / f"{stem}.md", reports / f"{stem}.json"
    lines = [f"# {stage}: {outcome}", ""]
    if seconds:
        lines.append(f"Stage time: {seconds:.1f} s.")
    if errors:
        lines += ["", "```", *errors, "```"]
    elif md_path.exists() and json_path.exists() and md_matches(md_path, json_path):
        if outcome.startswith("skipped"):
            lines.append("Nothing changed since the last run; its report follows.")
        lines += ["", md_path.read_text()]
    elif json_path.exists():
        # DVC restored a JSON (run cache, checkout) whose markdown was never written here.
        lines += ["", "The readable report belongs to another run; the results DVC restored:", "",
                  markdown_table(report_table(json.loads(json_path.read_text())))]
    lines += ["", f"Files: `{json_path}`, `{md_path}`"]
    create_markdown_artifact(key=artifact_key(prefix, stage, "report"), markdown="\n".join(lines),
                             description=f"{stage}: {outcome}")
    if json_path.exists() and not errors:
        table = report_table(json.loads(json_path.read_text()))
        create_table_artifact(key=artifact_key(prefix, stage, "metrics"), table=table,
                              description=f"{stage} metrics ({outcome})")


def summary_rows(root: Path, results: list[dict]) -> list[dict]:
    rows = []
    for r in results:
        report = root / "reports" / f"{report_stem(r['stage'])}.json"
        headline = ""
        if report.exists():
            data = json.loads(report.read_text())
            for key in ("selected", "test_accuracy", "failed", "sizes"):
                if key in data:
                    headline = f"{key}: {data[key]}"
                    break
        rows.append({"stage": r["stage"], "outcome": r["outcome"], "seconds": r["seconds"],
                     "result": headline})
    return rows


def publish_summary(root: Path, results: list[dict], prefix: str = "") -> None:
    rows = summary_rows(root, results)
    create_table_artifact(key=artifact_key(prefix, "pipeline", "summary"), table=rows,
                          description="what each stage did in this run")


def print_summary(root: Path, results: list[dict]) -> None:
    from prefect.settings import PREFECT_UI_URL

    print("\nPipeline summary")
    for r in summary_rows(root, results):
        print(f"  {r['stage']:<20} {r['outcome']:<26} {r['seconds']:>7.1f} s  {r['result']}")
    ui = PREFECT_UI_URL.value()
    print("\nWhere to look:")
    print(f"  reports:   {root / 'reports'}/<stage>.md and .json")
    print("  metrics:   .venv/bin/dvc metrics show   |   plots: .venv/bin/dvc plots show")
    print("  tensorboard: .venv/bin/tensorboard --logdir logs/tensorboard")
    if ui:
        print(f"  dashboard: {ui}/runs  (artifacts: {ui}/artifacts)")
