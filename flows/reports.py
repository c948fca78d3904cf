"""Turn each stage's reports/<stage>.json and .md into Prefect artifacts."""
from __future__ import annotations

import base64
import hashlib
import json
import re
from pathlib import Path

from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from slimline.dvc_runner import StageOutcome
from slimline.evaluation.history import flatten, metric_deltas
from slimline.repo import git, is_dirty, slug
from slimline.report import STAMP, markdown_table


def artifact_key(prefix: str, stage: str, kind: str) -> str:
    # Artifact keys allow lowercase letters, digits and dashes only.
    raw = f"{prefix}-{stage}-{kind}" if prefix else f"{stage}-{kind}"
    return slug(raw)


def md_matches(md_path: Path, json_path: Path) -> bool:
    """Whether the markdown report was written from this exact JSON (see slimline.report.write_report)."""
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


def commit_line(root: Path) -> str:
    """The commit the run started from, and whether the workspace differs from it."""
    commit = git("rev-parse", "--short=12", "HEAD", cwd=root, check=False) or "(no commit)"
    return f"Commit `{commit}`" + (" plus uncommitted changes" if is_dirty(root) else "") + "."


def read_lock(root: Path) -> dict:
    import yaml

    lock = root / "dvc.lock"
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # dvc.lock is long: 10x faster in C
    return (yaml.load(lock.read_text(), Loader=loader) or {}) if lock.exists() else {}


def provenance(root: Path, stage: str, head: str | None = None, lock: dict | None = None) -> list[str]:
    """The commit the run started from and the DVC hashes of the stage's outputs
    (head and lock: commit_line() and read_lock(), when the caller has them already)."""
    lines = [head or commit_line(root)]
    entry = (lock if lock is not None else read_lock(root)).get("stages", {}).get(stage, {})
    outs = [f"`{o['path']}` {o.get('md5', '?')[:12]}" for o in entry.get("outs", [])]
    if outs:
        lines.append("Outputs (DVC md5): " + ", ".join(outs) + ".")
    return lines


def deltas_table(root: Path, stem: str) -> str:
    """Key metrics against the last commit (what `dvc metrics diff HEAD` shows): the
    stage's report and, where it has one, its headline summary (evaluate_summary.json)."""
    rows = []
    for name in (f"{stem}_summary.json", f"{stem}.json"):
        rows += [r for r in metric_deltas(root, f"reports/{name}") if r["change"] or r["previous"] is None]
    if not rows:
        return "No metric changed against the last commit."
    shown = [{"metric": r["metric"], "previous": "-" if r["previous"] is None else r["previous"],
              "now": r["now"], "change": "new" if r["change"] is None else f"{r['change']:+.4g}"}
             for r in rows[:20]]
    more = f"\n\n({len(rows) - 20} more changed)" if len(rows) > 20 else ""
    return "Changes against the last commit:\n\n" + markdown_table(shown) + more


def stage_artifacts(root: Path, stage: str, outcome: StageOutcome, seconds: float, prefix: str = "",
                    errors: list[str] | None = None, head: str | None = None,
                    lock: dict | None = None, label: str | None = None) -> list[tuple[str, dict]]:
    """A stage's report (markdown) and metrics (table) artifacts for this outcome, as
    ("markdown" | "table", keyword arguments of create_<kind>_artifact). label: the
    outcome's words when they say more than outcome.label (a failure's exit code)."""
    label = label or outcome.label
    reports = root / "reports"
    stem = report_stem(stage)
    md_path, json_path = reports / f"{stem}.md", reports / f"{stem}.json"
    lines = [f"# {stage}: {label}", ""]
    if seconds:
        lines.append(f"Stage time: {seconds:.1f} s.")
    lines += provenance(root, stage, head, lock)
    if not errors and json_path.exists():
        lines += ["", deltas_table(root, stem)]
    if errors:
        lines += ["", "```", *errors, "```"]
    elif md_path.exists() and json_path.exists() and md_matches(md_path, json_path):
        if outcome.skipped:
            lines.append("Nothing changed since the last run; its report follows.")
        lines += ["", md_path.read_text()]
    elif json_path.exists():
        # DVC restored a JSON (run cache, checkout) whose markdown was never written here.
        lines += ["", "The readable report belongs to another run; the results DVC restored:", "",
                  markdown_table(report_table(json.loads(json_path.read_text())))]
    lines += ["", f"Files: [{json_path.name}]({json_path.as_uri()}), [{md_path.name}]({md_path.as_uri()})"
              + (" (run `dvc checkout` or `dvc pull` if missing)" if not json_path.exists() else "")]
    out = [("markdown", {"key": artifact_key(prefix, stage, "report"), "markdown": "\n".join(lines),
                         "description": f"{stage}: {label}"})]
    if json_path.exists() and not errors:
        out.append(("table", {"key": artifact_key(prefix, stage, "metrics"),
                              "table": report_table(json.loads(json_path.read_text())),
                              "description": f"{stage} metrics ({label})"}))
    return out


def publish_stage(root: Path, stage: str, outcome: StageOutcome, seconds: float, prefix: str = "",
                  errors: list[str] | None = None, label: str | None = None) -> None:
    create = {"markdown": create_markdown_artifact, "table": create_table_artifact}
    for kind, kwargs in stage_artifacts(root, stage, outcome, seconds, prefix, errors, label=label):
        create[kind](**kwargs)


def publish_skipped(root: Path, stages: list[str], outcome: StageOutcome, prefix: str = "") -> None:
    """The artifacts of stages that did not run, sent together: the commit and dvc.lock
    are read once, and the API calls go out concurrently rather than one after another."""
    if not stages:
        return
    import asyncio

    from prefect.artifacts import acreate_markdown_artifact, acreate_table_artifact

    head, lock = commit_line(root), read_lock(root)
    specs = [a for stage in stages for a in stage_artifacts(root, stage, outcome, 0.0, prefix,
                                                             head=head, lock=lock)]
    create = {"markdown": acreate_markdown_artifact, "table": acreate_table_artifact}

    async def send() -> None:
        await asyncio.gather(*(create[kind](**kwargs) for kind, kwargs in specs))

    asyncio.run(send())


def summary_rows(root: Path, results: list[dict]) -> list[dict]:
    rows = []
    for r in results:
        report = root / "reports" / f"{report_stem(r['stage'])}.json"
        headline = ""
        if report.exists():
            data = json.loads(report.read_text())
            for key in ("selected", "test_accuracy", "shortfall", "sizes"):
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


class Progress:
    """A progress artifact fed by the stage's epoch lines ("<name> epoch 3/15: ...")."""

    PATTERN = re.compile(r"^(\S+) epoch (\d+)/(\d+):")  # slimline/training/loop.py's epoch line

    def __init__(self, prefix: str, stage: str):
        self.key = artifact_key(prefix, stage, "progress")
        self.stage = stage
        self.id = None

    def update(self, line: str) -> None:
        m = self.PATTERN.match(line)
        if not m:
            return
        name, epoch, total = m.group(1), int(m.group(2)), int(m.group(3))
        pct = 100.0 * epoch / total
        description = f"{self.stage}: {name}, epoch {epoch} of {total}"
        if self.id is None:
            self.id = create_progress_artifact(progress=pct, key=self.key, description=description)
        else:
            update_progress_artifact(artifact_id=self.id, progress=pct, description=description)


def publish_gate(verdict, prefix: str) -> None:
    state = "passed" if verdict.ok else "FAILED"
    create_markdown_artifact(key=artifact_key(prefix, "regression", "gate"),
                             markdown=f"# Regression gate: {state}\n\n{verdict.message}\n",
                             description=f"regression gate {state}")


def inline_png(path: Path, alt: str) -> str:
    """A markdown image with the PNG inside it (a data: URI): the dashboard shows it
    with no remote and no file server, and it outlives any presigned link."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()})"


def sensitivity_markdown(root: Path) -> str | None:
    """reports/sensitivity.md with its chart inline, or None when quantize has not written it."""
    from slimline.compress.sensitivity_report import CHART, CHART_LINK

    md, png = root / "reports" / "sensitivity.md", root / "reports" / CHART
    if not md.exists():
        return None
    text = md.read_text()
    return text.replace(CHART_LINK, inline_png(png, "accuracy drop per layer")) if png.exists() else text


def publish_sensitivity(root: Path, prefix: str) -> None:
    """quantize's sensitivity report as the `<prefix>-sensitivity-report` artifact."""
    md = sensitivity_markdown(root)
    if md:
        create_markdown_artifact(key=artifact_key(prefix, "sensitivity", "report"), markdown=md,
                                 description="which layers hurt accuracy, for int8 and for pruning")


def publish_evaluate(root: Path, prefix: str, urls: dict[str, str] | None) -> None:
    """evaluate's pictures and model card, as dashboard artifacts: the two Pareto charts
    inline (`<prefix>-evaluate-pareto`), the model card of the shipped model
    (`<prefix>-model-card`), and, when the reports were uploaded, presigned links to
    the files (`<prefix>-evaluate-links`)."""
    charts = [(root / "reports" / f"pareto_{cost}.png", f"accuracy vs {what}")
              for cost, what in (("latency", "ORT batch-1 p50 latency"), ("bytes", "file size"))]
    shown = [f"### {alt}\n\n{inline_png(png, alt)}" for png, alt in charts if png.exists()]
    if shown:
        create_markdown_artifact(
            key=artifact_key(prefix, "evaluate", "pareto"),
            markdown="# Pareto charts\n\nBlue: the Pareto front; red: the selected variant. Files: "
                     + ", ".join(f"`reports/{png.name}`" for png, _ in charts) + "\n\n"
                     + "\n\n".join(shown) + "\n",
            description="accuracy vs latency and vs bytes, every variant")
    card = root / "models" / "ship" / "MODEL_CARD.md"
    if card.exists():
        create_markdown_artifact(key=artifact_key(prefix, "model", "card"), markdown=card.read_text(),
                                 description="the shipped model's card (models/ship/MODEL_CARD.md)")
    if urls:
        links = "\n".join(f"- [{name}]({url})" for name, url in sorted(urls.items()))
        create_markdown_artifact(key=artifact_key(prefix, "evaluate", "links"),
                                 markdown=f"# Evaluate report files\n\n{links}\n",
                                 description="presigned links to this run's evaluate report")
