"""dspy_actors.waiting outside a forward greenlet (it blocks), and its timer thread, which
exists only while a timer is pending."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout

import pytest

from dspy_actors.testing._polling import wait_until
from dspy_actors.waiting import Timers, in_forward_greenlet, wait_future


def test_wait_future_outside_a_forward_blocks_for_the_result() -> None:
    future: Future[int] = Future()
    threading.Timer(0.01, future.set_result, args=(7,)).start()
    assert not in_forward_greenlet()
    assert wait_future(future, timeout=10.0) == 7


def test_wait_future_raises_the_futures_error_or_a_timeout() -> None:
    failed: Future[int] = Future()
    failed.set_exception(ValueError("bad"))
    with pytest.raises(ValueError, match="bad"):
        wait_future(failed, timeout=1.0)
    with pytest.raises(FutureTimeout, match=r"not done within 0\.01 s"):
        wait_future(Future(), timeout=0.01)


def _timer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "dspy-actors-timers" and t.is_alive()]


def test_timers_fire_in_order_skip_cancelled_ones_and_leave_no_thread() -> None:
    timers = Timers()
    fired: list[str] = []
    done = threading.Event()
    now = time.monotonic()
    timers.schedule(now + 0.05, lambda: fired.append("late"))
    cancelled = timers.schedule(now + 0.02, lambda: fired.append("cancelled"))
    timers.schedule(now + 0.01, lambda: fired.append("early"))
    timers.schedule(now + 0.06, done.set)
    timers.cancel(cancelled)
    assert done.wait(10.0)
    assert fired == ["early", "late"]
    assert timers.pending() == 0
    wait_until(lambda: not _timer_threads(), timeout=10.0, what="the timer thread ended")


def test_cancelling_the_last_timer_ends_the_thread_soon() -> None:
    timers = Timers()
    timer = timers.schedule(time.monotonic() + 3600, lambda: None)
    assert _timer_threads()
    timers.cancel(timer)
    wait_until(lambda: not _timer_threads(), timeout=10.0, what="the timer thread ended")
