"""The expected-failure type every stage shares.

A StageError is bad input or a missing upstream output, not a bug: the stage
prints its message (which names the problem and the fix) and exits 2, with no
traceback to bury it.
"""


class StageError(Exception):
    """An expected failure; str() says what went wrong and how to fix it."""


class ShapeError(StageError, ValueError):
    """The input is too small for the requested conv/pool blocks."""
