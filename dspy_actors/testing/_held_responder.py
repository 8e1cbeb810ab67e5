"""Responders that control *when* the simulated LM answers, for tests of calls in flight.

A test about "calls in flight" must know calls are in flight; sleeping and hoping they got
there fails on a busy machine. :class:`HeldResponder` holds every request until the test
opens it and counts the requests that arrived, so a test can wait for exactly what it needs
(``held.wait_for_arrivals(3)``) and then act; :func:`slow_responder` answers after a fixed
delay, for load that must simply take a while.

>>> from dspy_actors.testing import HeldResponder, SimLM
>>> with SimLM() as sim:
...     held = HeldResponder()
...     sim.respond_with(held)
...     held.open()  # nothing is held any more: requests are answered at once
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dspy_actors.testing.sim_responder import default_responder

if TYPE_CHECKING:
    from dspy_actors.testing.sim_lm import SimRequest

Responder = Callable[["SimRequest"], Any]


class HeldResponder:
    """A SimLM responder that holds each request until :meth:`open` (or ``hold_limit``
    seconds, so a test that forgets to open never hangs the server), then answers with
    ``then``. It counts arrivals and requests in flight, and wakes waiters on each."""

    def __init__(self, then: Responder = default_responder, hold_limit: float = 60.0) -> None:
        self._then = then
        self._hold_limit = hold_limit
        self._changed = threading.Condition()
        self._opened = False
        self.arrived = 0
        self.in_flight = 0
        self.peak_in_flight = 0

    def __call__(self, request: SimRequest) -> Any:
        with self._changed:
            self.arrived += 1
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            self._changed.notify_all()
            self._changed.wait_for(lambda: self._opened, timeout=self._hold_limit)
            self.in_flight -= 1
            self._changed.notify_all()
        return self._then(request)

    def open(self) -> None:
        """Answer every held request, and every later one at once."""
        with self._changed:
            self._opened = True
            self._changed.notify_all()

    def wait_for_arrivals(self, count: int, timeout: float = 30.0) -> None:
        """Wait until ``count`` requests have arrived in total; fail after ``timeout``."""
        self.wait_until(lambda: self.arrived >= count, timeout, f"{count} request(s) to arrive")

    def wait_until(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        """Wait until ``condition`` (read under the responder's lock) holds."""
        with self._changed:
            if not self._changed.wait_for(condition, timeout=timeout):
                raise AssertionError(
                    f"timed out after {timeout} s waiting for {what} "
                    f"(arrived {self.arrived}, in flight {self.in_flight})"
                )


def slow_responder(seconds: float, then: Responder = default_responder) -> Responder:
    """A responder that answers with ``then`` after ``seconds``: load that takes a while.
    Tests that need requests to *be* in flight at some point use :class:`HeldResponder`."""

    def respond(request: SimRequest) -> Any:
        time.sleep(seconds)
        return then(request)

    return respond
