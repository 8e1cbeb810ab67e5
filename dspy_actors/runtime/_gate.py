"""CallGate: counts a program's calls in flight, per version, and bounds them.

Handles enter it before each attempt and leave it when the attempt ends; an upgrade waits
on it (a condition, with a timeout) until the old version's calls have drained.
"""

from __future__ import annotations

import threading
import time


class CallGate:
    """Calls in flight of one program (in total, and per version, for draining upgrades)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        # Every call enters and leaves under the bare lock (a C-level ``with``); only a
        # draining upgrade waits on the condition, so leaving notifies only while one does.
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._draining = 0
        self.total = 0
        self.by_version: dict[int, int] = {}

    def enter(self, version: int) -> bool:
        """Take a slot for a call on ``version``; False when ``limit`` are in flight."""
        with self._lock:
            if self.total >= self.limit:
                return False
            self.total += 1
            by_version = self.by_version
            by_version[version] = by_version.get(version, 0) + 1
            return True

    def leave(self, version: int) -> None:
        """Give back the slot a call on ``version`` took."""
        with self._lock:
            self.total -= 1
            left = self.by_version[version] - 1
            self.by_version[version] = left
            if left == 0 and self._draining:
                self._changed.notify_all()  # an upgrade is waiting for this version

    def in_flight(self, version: int) -> int:
        """Calls on ``version`` in flight now."""
        with self._lock:
            return self.by_version.get(version, 0)

    def wait_drained(self, version: int, timeout: float) -> bool:
        """Wait until no call on ``version`` is in flight, for at most ``timeout`` seconds;
        True if it drained."""
        deadline = time.monotonic() + timeout
        with self._lock:
            self._draining += 1
            try:
                while self.by_version.get(version, 0):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    self._changed.wait(remaining)
                return True
            finally:
                self._draining -= 1
