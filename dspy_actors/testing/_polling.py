"""Waiting on a condition with a deadline, for tests that run on a busy machine.

A test that sleeps for "long enough" fails when the machine is slower than its author's and
wastes time when it is faster. :func:`wait_until` polls instead: it returns as soon as the
condition holds and fails with a message naming what never happened once the deadline
passes, so the only timing a test states is how long is too long.

>>> from dspy_actors.testing import wait_until
>>> wait_until(lambda: True, timeout=1.0, what="nothing")
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

# Short enough that a test waits little past the condition, long enough not to spin a core
# that a loaded machine needs for the code under test.
POLL_INTERVAL_SECONDS = 0.005


def wait_until(
    condition: Callable[[], T],
    timeout: float = 30.0,
    what: str = "",
    interval: float = POLL_INTERVAL_SECONDS,
) -> T:
    """Poll ``condition`` until it returns something truthy, and return that value.

    Raises ``AssertionError`` naming ``what`` (or the condition) when it is still falsy
    after ``timeout`` seconds. The condition is checked once more at the deadline, so a
    slow poll never fails a condition that came true meanwhile.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            value = condition()
            if value:
                return value
            raise AssertionError(f"timed out after {timeout} s waiting for {what or condition!r}")
        time.sleep(interval)
