"""The failure types the library raises.

A StageError is bad input or a missing upstream output, not a bug: the stage
prints its message (which names the problem and the fix) and exits 2, with no
traceback to bury it.

StageFailed, TransientFailure and RegressionFailed are how a pipeline run fails
(slimline/dvc_runner.py, slimline/evaluation/gate.py): also expected, so the flow's
CLI prints their message alone; TransientFailure is the one worth another attempt.
"""


class StageError(Exception):
    """An expected failure; str() says what went wrong and how to fix it."""


class ShapeError(StageError, ValueError):
    """The input is too small for the requested conv/pool blocks."""


class StageFailed(RuntimeError):
    """A stage (or push) failed for a reason of its own: bad data, bad params, a bug."""


class TransientFailure(StageFailed):
    """A failure another attempt can fix: the DVC lock busy, the remote unreachable."""


class RegressionFailed(RuntimeError):
    """The selected model is worse than the previous run's beyond the gate's margins."""
