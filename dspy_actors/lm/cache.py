"""The LM response cache: a memory LRU in front of a SQLite file.

``cache_key(request)`` hashes everything that changes an answer (the LM builds the request:
provider, endpoint, model, messages, response format, every sampling parameter; never the
API key). ``Cache`` maps keys to JSON-serialisable dicts:

* memory tier: thread-safe LRU bounded by entries (see ``_cache_memory``); a hit costs a lock
  and a dict lookup, with no decoding;
* disk tier: one SQLite file bounded by bytes, shared by threads and processes (see
  ``_cache_sqlite``), default ``<user cache dir>/dspy_actors/lm_cache.sqlite3`` (the
  directory can be moved with the ``DSPY_ACTORS_CACHE_DIR`` environment variable).

Values come back as the cache's own decoded dicts, shared by every caller that hits the same
key: **treat them as read-only** (copy before changing anything). ``get`` and ``put`` never
raise because of the disk: problems are logged, counted in ``stats.errors`` and visible in
``health()``, and the cache carries on (rebuilding the file, or in memory only).
"""

from __future__ import annotations

import atexit
import enum
import hashlib
import json
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

import platformdirs

from dspy_actors._postgres_url import is_database_url
from dspy_actors.lm._cache_memory import MemoryLRU
from dspy_actors.lm._cache_sqlite import SqliteCacheFile

if TYPE_CHECKING:
    from dspy_actors.lm._cache_postgres import PostgresCacheTier

__all__ = [
    "Cache",
    "CacheHealth",
    "CacheStats",
    "cache_key",
    "default_cache",
    "default_disk_path",
]

CACHE_DIR_ENV = "DSPY_ACTORS_CACHE_DIR"
DISK_FILE_NAME = "lm_cache.sqlite3"
# Part of every key: bump it when the meaning of a cached value changes, and old entries
# simply stop matching instead of being misread.
_KEY_NAMESPACE = b"dspy_actors.lm.cache/v1\n"


def cache_key(request: Mapping[str, Any]) -> str:
    """The SHA-256 hex digest of ``request`` as canonical JSON.

    Stable across processes and Python versions: dict keys are sorted (insertion order does
    not matter), tuples equal lists, and a float with an integral value equals the int (JSON
    and every provider read ``1.0`` and ``1`` alike). Keys must be strings; values must be
    JSON types (``TypeError``/``ValueError`` otherwise, NaN included).
    """
    # Most requests are plain JSON already (str/int/bool/None leaves, no integral float, no
    # Mapping other than dict): JSON-encoding them as they are gives exactly the text the
    # canonical copy would, so the copy is skipped (this runs on every cached LM call).
    canonical = _ENCODER.encode(request if _is_plain(request) else _canonical(request))
    return hashlib.sha256(_KEY_NAMESPACE + canonical.encode()).hexdigest()


# One encoder for every key: json.dumps with options builds a new one per call.
_ENCODER = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)
_LEAVES = frozenset({str, int, bool, type(None)})


def _is_plain(value: Any) -> bool:
    """Whether ``_canonical(value)`` would encode to the same JSON as ``value`` itself:
    only exact dicts (str keys), lists, tuples, str, int, bool, None and non-integral floats.
    Leaves are checked inline, without a call each, because this is the hot path."""
    kind = type(value)
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str:
                return False
            if type(item) not in _LEAVES and not _is_plain(item):
                return False
        return True
    if kind is list or kind is tuple:
        for item in value:  # noqa: SIM110 - a plain loop: all() over a generator is slower
            if type(item) not in _LEAVES and not _is_plain(item):
                return False
        return True
    if kind in _LEAVES:
        return True
    # NaN and infinities are not integral: they stay as they are and the encoder rejects
    # them either way.
    return kind is float and not value.is_integer()


def _canonical(value: Any) -> Any:
    # Exact-type checks first: the values are almost always plain str/dict/list, and
    # isinstance against ABCs is much slower.
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return value
    if kind is dict or isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if type(key) is not str and not isinstance(key, str):
                raise TypeError(f"cache_key: mapping keys must be str, got {key!r}")
            out[key] = item if type(item) in _LEAVES else _canonical(item)
        return out
    if kind is list or kind is tuple or isinstance(value, list | tuple):
        return [item if type(item) in _LEAVES else _canonical(item) for item in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


@dataclass(frozen=True, slots=True)
class CacheStats:
    """Counters since the cache was created (``evictions`` counts both tiers)."""

    memory_hits: int
    disk_hits: int
    misses: int
    errors: int
    evictions: int
    memory_evictions: int
    disk_evictions: int
    memory_entries: int

    @property
    def hits(self) -> int:
        return self.memory_hits + self.disk_hits


@dataclass(frozen=True, slots=True)
class CacheHealth:
    """Which tiers are working.

    ``status``: ``"ok"`` (memory and disk), ``"memory_only"`` (configured without a disk
    path), ``"degraded"`` (the disk failed beyond repair: memory only, ``detail`` says why) or
    ``"closed"``. ``rebuilds`` counts the times a deleted, replaced or corrupt file was
    reopened or recreated.
    """

    status: Literal["ok", "memory_only", "degraded", "closed"]
    disk_path: Path | str | None
    rebuilds: int
    errors: int
    last_error: str | None
    detail: str


class _Default(enum.Enum):
    PATH = "default"


def default_disk_path() -> Path:
    """``$DSPY_ACTORS_CACHE_DIR/lm_cache.sqlite3``, else in the per-user cache directory."""
    directory = os.environ.get(CACHE_DIR_ENV) or platformdirs.user_cache_dir(
        "dspy_actors", appauthor=False
    )
    return Path(directory) / DISK_FILE_NAME


class Cache:
    """Memory LRU in front of an optional SQLite file; safe to share between threads.

    ``disk_path=None`` keeps everything in memory. Several ``Cache`` objects, in one process or
    many, may use the same file. A ``postgresql://`` URL as ``disk_path`` puts that tier in
    a table of that database instead, shared by every replica pointing at it (``disk_*``
    names and stats then describe that table; the memory tier stays in front).
    ``busy_timeout`` bounds how long a disk operation waits for
    another writer before it is skipped (and counted as an error). Close the cache when done
    (or use it as a context manager); a closed cache misses every ``get`` and ignores ``put``.
    """

    def __init__(
        self,
        *,
        memory_max_entries: int = 10_000,
        disk_path: str | os.PathLike[str] | _Default | None = _Default.PATH,
        disk_max_bytes: int = 1 << 30,
        busy_timeout: float = 5.0,
    ) -> None:
        self._memory = MemoryLRU(memory_max_entries)
        self._misses = 0
        self._misses_lock = threading.Lock()
        self._closed = False
        path = default_disk_path() if isinstance(disk_path, _Default) else disk_path
        self._disk: SqliteCacheFile | PostgresCacheTier | None
        if path is None:
            self._disk = None
        elif is_database_url(path):
            from dspy_actors.lm._cache_postgres import PostgresCacheTier

            self._disk = PostgresCacheTier(str(path), max_bytes=disk_max_bytes)
        else:
            self._disk = SqliteCacheFile(
                Path(path).expanduser(), max_bytes=disk_max_bytes, busy_timeout=busy_timeout
            )

    def get(self, key: str) -> dict[str, Any] | None:
        """The value cached under ``key`` or ``None``. Read-only: do not mutate it."""
        value = self._memory.get(key)
        if value is not None:
            return value
        disk = self._disk
        if disk is not None:
            value = disk.get(key)
            if value is not None:
                return self._memory.put_if_absent(key, value)
        with self._misses_lock:
            self._misses += 1
        return None

    def put(self, key: str, value: dict[str, Any]) -> None:
        """Cache ``value`` (a JSON-serialisable dict) under ``key`` in both tiers.

        Raises ``TypeError``/``ValueError`` if ``value`` is not JSON-serialisable (a caller
        bug); never because of the disk. The cache keeps its own decoded copy, so later
        changes to ``value`` do not leak in, and memory and disk hits look the same.
        """
        if not isinstance(value, dict):
            raise TypeError(f"Cache.put: value must be a dict, got {type(value).__name__}")
        payload = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        if self._closed:
            return
        self._memory.put(key, json.loads(payload))
        disk = self._disk
        if disk is not None:
            disk.put(key, payload)

    def clear(self) -> None:
        """Empty both tiers (the disk file is emptied for every process that shares it)."""
        self._memory.clear()
        if self._disk is not None:
            self._disk.clear()

    def close(self) -> None:
        """Release the disk tier (idempotent). Later gets miss and puts are ignored."""
        if self._closed:
            return
        self._closed = True
        self._memory.disable()
        if self._disk is not None:
            self._disk.close()

    def __enter__(self) -> Cache:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def disk_path(self) -> Path | str | None:
        """The SQLite file, or the shared tier's database URL (without a password)."""
        return None if self._disk is None else self._disk.path

    @property
    def stats(self) -> CacheStats:
        """A snapshot of the counters."""
        disk = self._disk
        memory_evictions = self._memory.evictions
        disk_evictions = disk.evictions if disk is not None else 0
        with self._misses_lock:
            misses = self._misses
        return CacheStats(
            memory_hits=self._memory.hits,
            disk_hits=disk.hits if disk is not None else 0,
            misses=misses,
            errors=disk.errors if disk is not None else 0,
            evictions=memory_evictions + disk_evictions,
            memory_evictions=memory_evictions,
            disk_evictions=disk_evictions,
            memory_entries=len(self._memory),
        )

    def health(self) -> CacheHealth:
        """Which tiers are in use, and why not if the disk was given up."""
        disk = self._disk
        if disk is None:
            status: Literal["ok", "memory_only", "degraded", "closed"] = (
                "closed" if self._closed else "memory_only"
            )
            return CacheHealth(status, None, 0, 0, None, f"{status}: no disk tier configured")
        return CacheHealth(
            status=disk.status,
            disk_path=disk.path,
            rebuilds=disk.rebuilds,
            errors=disk.errors,
            last_error=disk.last_error,
            detail=disk.detail,
        )

    def __repr__(self) -> str:
        return f"Cache(disk_path={self.disk_path!s}, status={self.health().status!r})"


_default: Cache | None = None
_default_lock = threading.Lock()


def default_cache() -> Cache:
    """The process-wide cache (created on first use at ``default_disk_path()``)."""
    global _default
    cache = _default
    if cache is None:
        with _default_lock:
            if _default is None:
                _default = Cache()
                # Applies pending recency updates and lets SQLite checkpoint its WAL.
                atexit.register(_default.close)
            cache = _default
    return cache
