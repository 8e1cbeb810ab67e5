"""The shared tier of the LM cache: one PostgreSQL table that every replica reads and fills,
so a request answered by one replica is not paid for again by another.

It stands where the SQLite file stands (``Cache(disk_path="postgresql://...")``) with the
same contract: every public method is total (never raises); a problem is counted, logged and
shown in the cache's health, and the call simply misses. While the database is unreachable
the tier is skipped for ``pause_after_error`` seconds at a time, so a down database costs a
call one short connection attempt at most, not a wait on every lookup. The table is bounded
by bytes: past ``max_bytes``, the least recently written rows go, checked every
``PRUNE_EVERY`` puts.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Literal

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from dspy_actors import redaction
from dspy_actors._postgres_url import display_url

__all__ = ["PostgresCacheTier"]

_log = redaction.get_logger("dspy_actors.lm.cache")

PRUNE_EVERY = 256
ROW_OVERHEAD_BYTES = 64
_SCHEMA = """CREATE TABLE IF NOT EXISTS lm_cache_entries (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    size BIGINT NOT NULL,
    written_at DOUBLE PRECISION NOT NULL
)"""
_SCHEMA_LOCK = 0x6C6D6361636865  # "lmcache": one creator of the table at a time


class PostgresCacheTier:
    """The PostgreSQL tier. Thread-safe; every public method is total (never raises)."""

    def __init__(
        self,
        url: str,
        *,
        max_bytes: int,
        timeout: float = 2.0,
        pause_after_error: float = 1.0,
    ) -> None:
        if max_bytes <= 0:
            raise ValueError(f"disk_max_bytes must be > 0, got {max_bytes}")
        self.url = url
        self.path = display_url(url)
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.pause_after_error = pause_after_error
        self._lock = threading.Lock()
        self._ready = False
        self._skip_until = 0.0
        self._puts = 0
        self.status: Literal["ok", "degraded", "closed"] = "ok"
        self.detail = f"PostgreSQL table lm_cache_entries at {self.path}"
        self.last_error: str | None = None
        self.hits = 0
        self.errors = 0
        self.evictions = 0
        self.rebuilds = 0
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=8,
            open=False,
            kwargs={"autocommit": True, "connect_timeout": max(1, round(timeout))},
            check=ConnectionPool.check_connection,
            name="dspy-actors-lm-cache",
            reconnect_timeout=365 * 24 * 3600.0,
        )
        self._pool.open(wait=False)

    def _run(self, op: str, sql: str, args: tuple[Any, ...]) -> Any:
        """One statement; its rows' first row (or None). None too on any failure."""
        if self.status == "closed" or time.monotonic() < self._skip_until:
            return None
        try:
            with self._pool.connection(timeout=self.timeout) as conn:
                if not self._ready:
                    self._ensure(conn)
                cursor = conn.execute(sql, args)
                return cursor.fetchone() if cursor.description is not None else cursor.rowcount
        except (psycopg.Error, PoolTimeout) as exc:
            why = redaction.redact(f"{type(exc).__name__}: {str(exc).strip()}")
            with self._lock:
                self.errors += 1
                self.last_error = why
                if isinstance(exc, psycopg.OperationalError | PoolTimeout):
                    self._skip_until = time.monotonic() + self.pause_after_error
            _log.warning("lm_cache.shared_error", database=self.path, op=op, error=why)
            return None

    def _ensure(self, conn: psycopg.Connection[Any]) -> None:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            conn.execute(_SCHEMA)
        self._ready = True

    def get(self, key: str) -> dict[str, Any] | None:
        """The decoded value under ``key``, or ``None`` (a miss, or a database problem)."""
        row = self._run("get", "SELECT value FROM lm_cache_entries WHERE key = %s", (key,))
        if not isinstance(row, tuple):
            return None
        try:
            value = json.loads(row[0])
        except (TypeError, ValueError):
            value = None
        if not isinstance(value, dict):
            with self._lock:
                self.errors += 1
            self._run("delete", "DELETE FROM lm_cache_entries WHERE key = %s", (key,))
            return None
        with self._lock:
            self.hits += 1
        return value

    def put(self, key: str, payload: str) -> None:
        """Store the JSON text ``payload`` under ``key`` (first writer wins: same answer)."""
        size = len(key) + len(payload.encode()) + ROW_OVERHEAD_BYTES
        if size > self.max_bytes // 2:
            return
        self._run(
            "put",
            "INSERT INTO lm_cache_entries (key, value, size, written_at) "
            "VALUES (%s, %s, %s, %s) ON CONFLICT (key) DO NOTHING",
            (key, payload, size, time.time()),
        )
        with self._lock:
            self._puts += 1
            due = self._puts % PRUNE_EVERY == 0
        if due:
            self._prune()

    def _prune(self) -> None:
        """Delete the oldest rows beyond ``max_bytes`` (down to 90% of it)."""
        evicted = self._run(
            "prune",
            "DELETE FROM lm_cache_entries WHERE key IN (SELECT key FROM (SELECT key, "
            "sum(size) OVER (ORDER BY written_at DESC, key) AS running "
            "FROM lm_cache_entries) ranked WHERE running > %s)",
            (int(self.max_bytes * 0.9),),
        )
        if isinstance(evicted, int) and evicted > 0:
            with self._lock:
                self.evictions += evicted

    def clear(self) -> None:
        """Delete every row (for every replica sharing the table)."""
        self._run("clear", "DELETE FROM lm_cache_entries", ())

    def close(self) -> None:
        if self.status != "closed":
            self.status = "closed"
            self.detail = f"closed (was {self.path})"
            self._pool.close(timeout=5.0)
