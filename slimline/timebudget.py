"""A wall-clock budget for one step that can run for minutes: `with time_budget(s, what):`.

Torch-Pruning's dependency graph of some models (timm's efficientvit_m0, rexnet_100) takes
many minutes in pure-Python loops. A step past its budget is interrupted where it stands
and OutOfTime raised in its place, so that the caller can report it like any other
failure (or mark the step not applicable) instead of hanging a check or a scheduled flow.

Two ways to interrupt, chosen per call:
- the main thread: SIGALRM from setitimer; its handler raises, which also ends a sleep
  or other blocking call that lets signals through. A timer already armed (an outer
  budget's, a test runner's) is kept: whichever is due first fires, and the other one is
  handed back its handler and its remaining time;
- any other thread (Prefect runs tasks in worker threads, and signals reach only the main
  thread): a timer thread injects the exception with PyThreadState_SetAsyncExc. It lands
  at the step's next Python bytecode, so it cannot cut a long C call short, but
  Torch-Pruning's loops are Python.

No torch here: `slimline check` imports it before deciding whether torch is needed.
"""
from __future__ import annotations

import ctypes
import signal
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator


class OutOfTime(Exception):
    """A step ran past its budget; str() names the step and the budget."""

    def __init__(self, what: str, seconds: float):
        super().__init__(f"{what} took more than {seconds:g} s")
        self.what, self.seconds = what, seconds


class _Expired(BaseException):
    """Raised inside the step when the budget runs out. A BaseException, so that an
    `except Exception` in the step's own code cannot swallow it."""


@contextmanager
def time_budget(seconds: float | None, what: str) -> Iterator[None]:
    """Run the block within `seconds` of wall-clock time, else raise OutOfTime(what, seconds).
    None: no budget. Budgets nest; the old handler and timer are restored on the way out."""
    if seconds is None:
        yield
        return
    if seconds <= 0:
        raise ValueError(f"a time budget must be positive, got {seconds}")
    # This budget's own class: an outer budget's expiry passes through untouched.
    expired = type("_Expired", (_Expired,), {})
    in_main = threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")
    stop = (_arm_signal if in_main else _arm_thread)(seconds, expired)
    try:
        try:
            yield
        finally:
            stop()
    except expired:
        raise OutOfTime(what, seconds) from None


def _arm_signal(seconds: float, expired: type[_Expired]) -> Callable[[], None]:
    outer, interval = signal.getitimer(signal.ITIMER_REAL)  # another's timer: its time left (0: none)
    ours_first = not outer or seconds < outer
    start = time.monotonic()

    def on_alarm(signum, frame):
        if ours_first:
            raise expired
        _hand_over(old, signum, frame)  # the other timer was due first: its handler's turn

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds if ours_first else outer)

    def stop() -> None:
        try:
            signal.setitimer(signal.ITIMER_REAL, 0)
        finally:  # even when the alarm fires right here: the old handler and timer must come back
            signal.signal(signal.SIGALRM, old)
            left = outer - (time.monotonic() - start)
            if outer and left > 0:
                signal.setitimer(signal.ITIMER_REAL, left, interval)

    return stop


def _hand_over(handler, signum, frame) -> None:
    """Do what SIGALRM did before our handler replaced it."""
    if callable(handler):
        handler(signum, frame)
    elif handler == signal.SIG_DFL:  # the default ends the process: let it
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.raise_signal(signal.SIGALRM)


def _arm_thread(seconds: float, expired: type[_Expired]) -> Callable[[], None]:
    target = threading.get_ident()
    lock = threading.Lock()
    state = {"done": False, "fired": False}

    def fire() -> None:
        with lock:  # never after stop(): the exception would land in whatever runs next
            if not state["done"]:
                state["fired"] = True
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(target), ctypes.py_object(expired))

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()

    def stop() -> None:
        with lock:
            state["done"] = True
            if state["fired"]:  # fired as the step finished: clear it if still pending (NULL clears)
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(target), None)
        timer.cancel()

    return stop
