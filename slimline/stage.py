"""The stage runtime every tasks/<stage>.py runs under: argument parsing, params
validation, the dvc.yaml check, and one readable line for an expected failure.

A stage's report files are slimline.report's, the files stages leave each other
slimline.paths'; library code imports those, never this module.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

from slimline.errors import StageError
from slimline.params import Params, ParamsError, load_params
from slimline.repo import die_with_parent  # every stage calls it first


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
         sections: tuple[str, ...] | None = None, settings: tuple[str, ...] = (),
         trains: bool = False) -> None:
    """Parse args, validate the params sections the stage reads (its dvc.yaml `params`;
    None: the whole file) and the settings sections it reads but reruns for nothing
    (`loader`: they cannot change a result), run body; expected errors exit non-zero
    with one readable message instead of a traceback. trains: a training stage, which
    `train.distributed.nproc_per_node` > 1 relaunches as that many ranks under torchrun."""
    parser = argparse.ArgumentParser(prog=f"python -m tasks.{stage}")
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    if add_args:
        add_args(parser)
    args = parser.parse_args()
    die_with_parent()
    try:
        params = load_params(args.params, None if sections is None else (*sections, *settings))
        check_declared(stage, args.params)
        if trains and _relaunched(stage, params):
            return
        body(params, args)
    except (ParamsError, StageError, FileNotFoundError, FloatingPointError) as err:
        # Expected failures carry a readable message that names the fix; a
        # traceback would only bury it. Anything else is a bug and keeps its traceback.
        print(f"ERROR [{stage}]: {err}", file=sys.stderr, flush=True)
        if trains:
            from slimline.training import distributed

            distributed.record_failure(str(err))
        sys.exit(2)
    if trains:
        from slimline.training import distributed

        distributed.finish()


def _relaunched(stage: str, params: Params) -> bool:
    """Run the stage as train.distributed.nproc_per_node ranks under torchrun, unless it is
    one process, or this is a rank; True once the ranks have finished."""
    from slimline.training import distributed

    nproc = params.train.distributed.nproc_per_node
    if nproc == 1 or distributed.current().active:
        return False
    distributed.check(nproc, params.train.device, params.train.batch_size)
    distributed.relaunch(stage, nproc, params.train.num_threads, sys.argv[1:])
    return True
