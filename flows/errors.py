"""How a pipeline run can fail, and which failures are worth another attempt."""
from __future__ import annotations


class StageFailed(RuntimeError):
    """A stage (or push) failed for a reason of its own: bad data, bad params, a bug."""


class TransientFailure(StageFailed):
    """A failure another attempt can fix: the DVC lock busy, the remote unreachable."""


class RegressionFailed(RuntimeError):
    """The selected model is worse than the previous run's beyond the gate's margins."""


def retry_transient(task, task_run, state) -> bool:
    """Prefect retry_condition_fn: retry TransientFailure only."""
    try:
        state.result()
    except TransientFailure:
        return True
    except BaseException:
        return False
    return False
