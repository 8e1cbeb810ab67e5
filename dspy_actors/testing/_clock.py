"""A clock that moves only when told to: for tests of time windows (breakers, rate limits,
restart intensity) that must not depend on how fast the machine runs."""

from __future__ import annotations

import threading

__all__ = ["FakeClock"]


class FakeClock:
    """A thread-safe monotonic clock: ``clock()`` reads it, ``clock.advance(s)`` moves it."""

    def __init__(self, start: float = 1000.0) -> None:
        self._lock = threading.Lock()
        self._now = start

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds
