"""The memory tier of the LM cache: a thread-safe LRU bounded by its number of entries.

This sits on the hot path of every cached LM call, so a hit is one lock, one dict lookup and
one ``move_to_end`` (all O(1)); values are stored already decoded and returned as they are.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any


class MemoryLRU:
    """Least-recently-used map from cache key to decoded value, at most ``max_entries`` long.

    ``max_entries == 0`` disables the tier: nothing is stored and every lookup misses.
    """

    __slots__ = ("_entries", "_evictions", "_hits", "_lock", "max_entries")

    def __init__(self, max_entries: int) -> None:
        if max_entries < 0:
            raise ValueError(f"memory_max_entries must be >= 0, got {max_entries}")
        self.max_entries = max_entries
        self._entries: OrderedDict[str, dict[str, Any]] = OrderedDict()
        # One plain lock: held for a few dict operations only, never across I/O.
        self._lock = threading.Lock()
        self._hits = 0
        self._evictions = 0

    def get(self, key: str) -> dict[str, Any] | None:
        """The value stored under ``key`` (marked most recently used), or ``None``."""
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
                self._hits += 1
            return value

    def put(self, key: str, value: dict[str, Any]) -> None:
        """Store ``value`` as the most recently used entry, evicting the oldest if full."""
        if self.max_entries == 0:
            return
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            self._evict_locked()

    def put_if_absent(self, key: str, value: dict[str, Any]) -> dict[str, Any]:
        """Store ``value`` unless ``key`` is present; return whichever value is now stored.

        Used to promote a disk hit without overwriting a newer value put meanwhile.
        """
        if self.max_entries == 0:
            return value
        with self._lock:
            current = self._entries.get(key)
            if current is not None:
                return current
            self._entries[key] = value
            self._evict_locked()
            return value

    def _evict_locked(self) -> None:
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
            self._evictions += 1

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def disable(self) -> None:
        """Drop every entry and store nothing from now on (a closed cache)."""
        with self._lock:
            self.max_entries = 0
            self._entries.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    @property
    def hits(self) -> int:
        with self._lock:
            return self._hits

    @property
    def evictions(self) -> int:
        with self._lock:
            return self._evictions
