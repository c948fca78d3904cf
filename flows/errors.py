"""Which failures of a pipeline run are worth another attempt (a Prefect retry condition).

The failure types themselves are the library's (slimline/errors.py)."""
from __future__ import annotations

from slimline.errors import TransientFailure


def retry_transient(task, task_run, state) -> bool:
    """Prefect retry_condition_fn: retry TransientFailure only."""
    try:
        state.result()
    except TransientFailure:
        return True
    except BaseException:  # noqa: BLE001 - every other failure fails the same way again
        return False
    return False
