"""Poison inputs: an input that crashes a module again and again is quarantined.

The count survives actor restarts (it lives in the app, keyed by program and input), so a
crash-looping input is stopped after ``threshold`` crashes instead of taking the tree down
with restarts. A quarantined input is refused at once until its dead letter is replayed.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Mapping
from typing import Any


def fingerprint(program: str, inputs: Mapping[str, Any]) -> str:
    """A stable id for (program, inputs); values that are not JSON count by their repr."""
    text = json.dumps(inputs, sort_keys=True, default=repr, ensure_ascii=False)
    return hashlib.sha256(f"{program}\0{text}".encode()).hexdigest()


class PoisonTracker:
    """Counts crashes per input; says when an input is poison. Thread-safe."""

    def __init__(self, threshold: int) -> None:
        if threshold < 1:
            raise ValueError(f"poison threshold must be >= 1, got {threshold!r}")
        self.threshold = threshold
        self._lock = threading.Lock()
        self._crashes: dict[str, int] = {}
        self._quarantined: dict[str, str] = {}  # fingerprint -> dead letter id

    def crashed(self, key: str) -> int:
        """Count one crash caused by this input; returns how many it has caused."""
        with self._lock:
            count = self._crashes.get(key, 0) + 1
            self._crashes[key] = count
            return count

    def quarantine(self, key: str, dead_letter_id: str) -> None:
        with self._lock:
            self._quarantined[key] = dead_letter_id
            self._crashes.pop(key, None)

    def any_quarantined(self) -> bool:
        """Whether any input is quarantined (lets callers skip fingerprinting)."""
        return bool(self._quarantined)

    def quarantined(self, key: str) -> str | None:
        """The dead letter id if this input is quarantined."""
        return self._quarantined.get(key)

    def release(self, key: str) -> None:
        with self._lock:
            self._quarantined.pop(key, None)
            self._crashes.pop(key, None)
