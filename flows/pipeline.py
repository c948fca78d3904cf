"""The pipeline flow: run dvc.yaml's stages, in DVC's order, as Prefect tasks.

    python -m flows.pipeline [--targets STAGE ...] [--force] [-S key=value ...] [--[no-]push]

How stages run through DVC (order, status, the `dvc repro --single-item` subprocess,
restoring outputs after a failure, what each stage did) is slimline/dvc_runner.py's;
this module makes each stage a Prefect task with retries, streams its output into the
run log, and publishes its report as artifacts.

Around the stages: one run per workspace at a time (a Prefect global concurrency
limit), overrides checked by the params schema (slimline/overrides.py), the regression
gate (slimline/evaluation/gate.py), and, for deployment runs, the result saved as a DVC
experiment and pushed when a remote is configured (flows/remote.py).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.errors import retry_transient
from flows.remote import Remote, push_outputs, remote_for, save_run, upload_evaluate
from flows.reports import (
    Progress,
    publish_evaluate,
    publish_gate,
    publish_sensitivity,
    publish_skipped,
    publish_stage,
    publish_summary,
)
from flows.workspace import workspace_slot
from slimline import dvc_runner
from slimline.dvc_runner import (
    StageOutcome,
    StageRun,
    UnknownStage,
    is_up_to_date,
    pipeline_up_to_date,
    stage_order,
    uncached_outs,
)
from slimline.errors import RegressionFailed, StageFailed
from slimline.evaluation import incumbent
from slimline.evaluation.gate import regression_gate
from slimline.overrides import OverrideError, apply_to, parse_set_args
from slimline.overrides import apply as apply_overrides
from slimline.overrides import validate as validate_overrides
from slimline.params import ParamsError, load_params

ROOT = Path(__file__).resolve().parent.parent
# What the CLI reports in one line: bad input or a failed stage, each message naming the
# fix. Anything else is a bug and keeps its traceback.
EXPECTED = (StageFailed, RegressionFailed, OverrideError, ParamsError, UnknownStage)


# NO_CACHE: DVC alone decides what is up to date. Retries only for transient
# failures (DVC lock busy, remote unreachable): 3 attempts, waiting 5 s then
# 20 s, so an outage costs 25 s of waiting on top of the bounded S3 retries
# (slimline/s3.py bounded_env). A failing stage (bad data, bad params) fails the
# same way again, so retry_transient never retries it.
@task(task_run_name="{stage}", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[5, 20],
      retry_condition_fn=retry_transient)
def run_stage(root: str, stage: str, force: bool, key_prefix: str, uncached: list[str] | None = None,
              remote: Remote | None = None, no_run_cache: bool = False) -> StageRun:
    logger = get_run_logger()
    progress = Progress(key_prefix, stage)

    def on_line(line: str) -> None:
        progress.update(line)
        (logger.error if line.startswith("ERROR") else logger.info)("[%s] %s", stage, line)

    # With a remote, fetch only what this stage needs (dvc_runner.repro_args).
    run = dvc_runner.run_stage(Path(root), stage, force=force, pull=remote is not None,
                               no_run_cache=no_run_cache, uncached=uncached or [],
                               remote_url=remote.url if remote else None,
                               remote_name=remote.name if remote else "storage",
                               on_line=on_line, logger=logger)
    errors = run.message.splitlines()[1:] if run.outcome is StageOutcome.FAILED else None
    publish_stage(Path(root), stage, run.outcome, run.seconds, key_prefix, errors, label=run.label)
    run.check()  # a failure: TransientFailure (retried) or StageFailed
    return run


def _default_prefix() -> str:
    # Artifact keys are global: a deployment's runs keep their own history
    # ("nightly-evaluate-report"), and runs outside any deployment use "local".
    from prefect.runtime import deployment

    return deployment.name or "local"


@flow(name="slimline-pipeline", log_prints=True)
def pipeline(targets: list[str] | None = None, force: bool = False, push: bool | None = None,
             overrides: dict | None = None, root: str | None = None,
             key_prefix: str | None = None, save_experiment: bool | None = None,
             no_run_cache: bool = False) -> list[dict]:
    """Reproduce the DVC pipeline (or `targets` and what they depend on).

    overrides: params keys to change for this run, e.g. {"train.epochs": 3}
      (validated first, applied like `dvc exp run -S`, recorded in the experiment).
    push: push outputs (and the experiment) at the end; None pushes when a DVC remote
      is configured. save_experiment: record the run with `dvc exp save`; None does
      it for deployment runs.
    """
    logger = get_run_logger()
    root_path = Path(root or ROOT).resolve()
    prefix = key_prefix if key_prefix is not None else _default_prefix()
    # Bad overrides fail here, naming the key, before the workspace is touched.
    validate_overrides(root_path, overrides or {})
    results: list[dict] = []
    with workspace_slot(root_path, logger):
        try:
            set_args = apply_overrides(root_path, overrides or {})
            if set_args:
                logger.info("params.yaml overrides (as `dvc exp run -S`): %s", " ".join(set_args))
            remote = remote_for(root_path, logger)
            outcomes = run_stages(root_path, targets, force, prefix, remote, results, no_run_cache)
            finalize(root_path, prefix, remote, push, save_experiment, results, outcomes)
        finally:
            publish_summary(root_path, results, prefix)  # failed runs get their summary too
    return results


def finalize(root_path: Path, prefix: str, remote: Remote | None, push: bool | None,
             save_experiment: bool | None, results: list[dict],
             outcomes: dict[str, StageOutcome]) -> list[dict]:
    """After the stages (`outcomes`: what each did): publish the sensitivity report and the
    Pareto charts, judge the run by the regression gate (passed: what shipped becomes the
    incumbent), save the run as a DVC experiment, then fail on a failed gate or push. Appends
    each step's outcome to `results` (a failed gate's summary still lists them) and returns them."""
    from prefect.runtime import deployment

    logger = get_run_logger()
    start = len(results)
    if "quantize" in outcomes and outcomes["quantize"] not in (StageOutcome.UP_TO_DATE, StageOutcome.FAILED):
        publish_sensitivity(root_path, prefix)  # never a stale report
    if "evaluate" in outcomes and outcomes["evaluate"] is not StageOutcome.UP_TO_DATE:
        # charts and model card; push=False: nothing goes to the remote, the report links neither
        publish_evaluate(root_path, prefix,
                       upload_evaluate(root_path, remote, logger) if push is not False else None)
    gate = regression_gate(root_path, load_params(root_path / "params.yaml").gate)
    publish_gate(gate, prefix)
    if gate.ok and accept_incumbent(root_path, logger):  # before the experiment is saved: it carries it
        results.append(reevaluate(root_path, prefix, remote, logger))
    experiment = None
    if save_experiment if save_experiment is not None else bool(deployment.id):
        present = [stage for stage, outcome in outcomes.items() if outcome is not StageOutcome.ON_REMOTE]
        if present:  # with no targets, `dvc exp save` would cache every stage's outputs
            results.append(save_run(root_path, prefix, present))
            experiment = results[-1]["experiment"]
        else:
            logger.info("every stage's outputs are on the remote already: no experiment to save")
    gate.check()  # failed: saved above for inspection, but neither pushed nor accepted
    logger.info(gate.message)
    if remote is None:
        logger.info("no DVC remote configured: nothing pushed; outputs stay in this "
                    "machine's DVC cache")
    elif push is False:
        logger.info("push=False: outputs not pushed to DVC remote '%s'", remote.name)
    else:
        results.append(push_outputs(str(root_path), remote, experiment))
    return results[start:]


def shipped(root: Path) -> str | None:
    report = root / "reports" / "evaluate.json"
    return json.loads(report.read_text()).get("selected") if report.exists() else None


def accept_incumbent(root: Path, logger) -> bool:
    """The shipped variant passed the gate: it becomes the incumbent that the next
    evaluate keeps unless a challenger clearly beats it (slimline/evaluation/incumbent.py).
    Only this flow writes the file; evaluate reads it. Returns whether it changed."""
    selected = shipped(root)
    if selected is None:  # nothing shipped: the last accepted variant stays the incumbent
        logger.info("no variant shipped: the incumbent stays as it was")
        return False
    if incumbent.write(selected, root / incumbent.PATH):
        logger.info("%s is now the incumbent (%s): commit it with dvc.lock", selected, incumbent.PATH)
        return True
    logger.info("%s stays the incumbent", selected)
    return False


def reevaluate(root: Path, prefix: str, remote: Remote | None, logger) -> dict:
    """evaluate read the previous incumbent, and the file is a dep of it: run it again with
    the new one, so that the run leaves dvc.lock true (a new incumbent is rare: a first run,
    a clear win, a reset). The new incumbent is what it shipped, so it stays, unless a
    challenger now beats it by the wide band; then that waits for the next run's gate."""
    from dvc.repo import Repo

    accepted = shipped(root)
    with Repo(str(root)) as repo:
        uncached = uncached_outs(repo, "evaluate")
    run = run_stage(str(root), "evaluate", False, prefix, uncached, remote)
    if shipped(root) != accepted:
        logger.warning("evaluate now ships %s over the new incumbent %s: the next run's gate decides",
                       shipped(root), accepted)
    return run.record() | {"stage": "evaluate (new incumbent)"}


def run_stages(root_path: Path, targets, force: bool, prefix: str, remote, results: list[dict],
               no_run_cache: bool = False) -> dict[str, StageOutcome]:
    """Run the stages in DVC's order, appending each one's summary row to `results` (so a
    failed run's summary still lists what ran before the failure); returns what each did."""
    from dvc.repo import Repo

    logger = get_run_logger()
    outcomes: dict[str, StageOutcome] = {}
    repo = Repo(str(root_path))
    try:
        order = stage_order(repo, targets)
        logger.info("stages, in DVC's order: %s", ", ".join(order))
        # One status pass over the whole graph (0.6 s here) settles the common "nothing
        # changed" case; otherwise each stage is checked when its turn comes.
        all_clean = pipeline_up_to_date(repo)
        skipped: list[str] = []  # up to date: no task run; their artifacts go out together
        try:
            for stage in order:
                if not force and (all_clean or is_up_to_date(repo, stage)):
                    logger.info("%s: up to date, skipped", stage)
                    skipped.append(stage)
                    outcomes[stage] = StageOutcome.UP_TO_DATE
                    results.append(StageRun(stage, StageOutcome.UP_TO_DATE).record())
                    continue
                try:
                    run = run_stage(str(root_path), stage, force, prefix, uncached_outs(repo, stage),
                                    remote, no_run_cache)
                except StageFailed:
                    results.append(StageRun(stage, StageOutcome.FAILED).record())
                    raise
                outcomes[stage] = run.outcome
                results.append(run.record())
                repo.close()  # dvc.lock changed under us: read the graph state afresh
                repo = Repo(str(root_path))
        finally:
            publish_skipped(root_path, skipped, StageOutcome.UP_TO_DATE, prefix)
    finally:
        repo.close()
    return outcomes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flows.pipeline", description=__doc__.split("\n")[0])
    p.add_argument("--targets", nargs="*", help="stages to reproduce (default: all)")
    p.add_argument("--force", action="store_true", help="rerun stages even if up to date")
    p.add_argument("--root", default=None, help="project root (default: this checkout)")
    p.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a params.yaml key for this run, as `dvc exp run -S`")
    p.add_argument("--push", action=argparse.BooleanOptionalAction, default=None,
                   help="push outputs to the DVC remote at the end (default: when one is configured)")
    p.add_argument("--save-experiment", action="store_true", help="record the run with `dvc exp save`")
    p.add_argument("--no-run-cache", action="store_true", help="never restore stages from DVC's run cache")
    args = p.parse_args(argv)
    from slimline.check import declare_files
    from slimline.codedeps import read_params
    from slimline.project import find_root

    root = Path(args.root).resolve() if args.root else (find_root() or ROOT)
    # Run by hand: add what params.yaml brings to dvc.yaml first, as `slimline check
    # --write-deps` does. A deployment's run calls pipeline() directly and refuses instead.
    try:
        overrides = parse_set_args(args.set)
    except OverrideError as err:
        print(err, file=sys.stderr)
        return 1
    raw = read_params(root / "params.yaml")
    try:
        raw = apply_to(raw, overrides)
    except OverrideError:
        pass  # pipeline() below names the bad key; declare what params.yaml itself brings
    for line in declare_files(raw, root):
        print(line)
    try:
        results = pipeline(targets=args.targets or None, force=args.force, root=str(root),
                           overrides=overrides, push=args.push,
                           save_experiment=args.save_experiment or None, no_run_cache=args.no_run_cache)
    except EXPECTED as err:  # one readable line; anything else goes on with its traceback
        print(f"\npipeline failed: {err}", file=sys.stderr)
        return 1
    from flows.reports import print_summary

    print_summary(root, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
