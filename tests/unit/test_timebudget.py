"""time_budget: a step past its budget is stopped where it stands and named, in the main
thread (SIGALRM) and in a worker thread (as Prefect runs tasks); nothing leaks after."""
from __future__ import annotations

import signal
import threading
import time

import pytest

from slimline.timebudget import OutOfTime, time_budget


def _timer_restored(before: tuple[float, float]) -> bool:
    """No timer of ours left armed; one armed before (a test runner's) is armed again, with
    the time it had left."""
    after = signal.getitimer(signal.ITIMER_REAL)
    return after == (0.0, 0.0) if before[0] == 0 else 0 < after[0] <= before[0]


def test_a_step_past_its_budget_is_stopped_and_named():
    handler, timer = signal.getsignal(signal.SIGALRM), signal.getitimer(signal.ITIMER_REAL)
    start = time.monotonic()
    with pytest.raises(OutOfTime, match=r"^the fake graph took more than 0\.2 s$") as info:
        with time_budget(0.2, "the fake graph"):
            time.sleep(30)  # a blocking call: the alarm ends it
    assert 0.2 <= time.monotonic() - start < 2
    assert (info.value.what, info.value.seconds) == ("the fake graph", 0.2)
    assert signal.getsignal(signal.SIGALRM) == handler and _timer_restored(timer)


def _in_a_thread(body) -> list:
    caught: list = []

    def run():
        try:
            body()
            caught.append(None)
        except BaseException as err:  # noqa: BLE001 - handed to the test to assert on
            caught.append(err)

    worker = threading.Thread(target=run)
    worker.start()
    worker.join(10)
    return caught


def test_a_worker_thread_is_stopped_too():
    def busy():
        with time_budget(0.2, "the fake graph"):
            while True:  # Python loops, as Torch-Pruning's
                time.sleep(0.01)

    start = time.monotonic()
    (err,) = _in_a_thread(busy)
    assert isinstance(err, OutOfTime) and str(err) == "the fake graph took more than 0.2 s"
    assert time.monotonic() - start < 2


def test_a_step_within_its_budget_leaves_nothing_behind():
    def quick_then_wait():
        with time_budget(0.05, "quick"):
            pass
        time.sleep(0.15)  # past the budget: no late exception may land here

    assert _in_a_thread(quick_then_wait) == [None]
    quick_then_wait()  # the same in the main thread
    with time_budget(None, "unbounded"):
        pass


def test_budgets_nest_and_an_inner_expiry_is_the_inner_ones():
    timer = signal.getitimer(signal.ITIMER_REAL)
    with time_budget(5, "outer"):
        with pytest.raises(OutOfTime, match="inner took more than 0.1 s"):
            with time_budget(0.1, "inner"):
                time.sleep(30)
        time.sleep(0.05)  # the outer budget still runs, unharmed
    with pytest.raises(OutOfTime, match="outer took more than 0.2 s"):
        with time_budget(0.2, "outer"):
            with time_budget(5, "inner"):  # the outer one is due first
                time.sleep(30)
    assert _timer_restored(timer)
