"""The disk tier of the LM cache: one SQLite file shared by many threads and processes.

How it stays correct and cheap:

* WAL journal mode, so readers never block the (single) writer and processes share the file;
  every connection waits up to ``busy_timeout`` seconds for a lock before giving up.
* A small pool of connections, each used by one thread at a time (``check_same_thread`` is
  off only so a connection can move between threads *between* uses, never during one).
* Values are JSON text (never pickle: reading the file can never run code).
* The file is bounded in bytes. A trigger keeps the running total of row sizes in ``meta``,
  so a put reads one row to learn whether it is over budget, and eviction of the least
  recently used rows runs in batches down to 90% of the budget, not one row per put.
* Reads never write: a disk hit records the key's access time in memory, and the next put
  (or ``close``) applies those touches inside the write transaction it takes anyway.

Failure handling: no method raises to its caller. A busy/locked database after the timeout
skips the operation. A deleted, replaced or corrupt file (checked before each operation by
inode and header, because an open SQLite connection keeps working on a deleted file and never
re-reads a page it has cached) is reopened or rebuilt; if that fails, or happens too often,
the tier is disabled and the cache goes on in memory only. Every such event is logged as a
structured warning and counted.

Over 400 lines: one file tier: its byte budget, eviction, batched touches and recovery work
on the same connection pool and meta row.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

from dspy_actors import redaction
from dspy_actors._sqlite_file import (
    FileProblem,
    PooledSqliteFile,
    attach_with_retries,
    describe,
    is_busy,
    is_same_file,
    write_tx,
)

_log = redaction.get_logger("dspy_actors.lm.cache")

T = TypeVar("T")

SCHEMA_VERSION = 1
# Bytes a row costs beyond its key and value (index entry, row header): keeps the byte budget
# honest for many small rows. The file is still somewhat larger (page slack, the WAL).
ROW_OVERHEAD_BYTES = 64
# Eviction frees down to this fraction of the budget so that most puts evict nothing.
LOW_WATER_FRACTION = 0.9
# Idle connections kept for reuse; more are opened under load and closed when returned.
MAX_IDLE_CONNECTIONS = 8
# Disk hits remembered until the next put applies them (beyond this, recency is dropped).
MAX_PENDING_TOUCHES = 4096
# More than this many recoveries within the window means the disk keeps failing: give up on it.
MAX_RECOVERIES = 3
RECOVERY_WINDOW_S = 60.0


_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS entries (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL,
        size INTEGER NOT NULL,
        accessed INTEGER NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS entries_by_access ON entries (accessed)",
    "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    f"INSERT OR IGNORE INTO meta (name, value) VALUES ('schema_version', {SCHEMA_VERSION})",
    "INSERT OR IGNORE INTO meta (name, value) VALUES ('total_bytes', 0)",
    """CREATE TRIGGER IF NOT EXISTS entries_size_insert AFTER INSERT ON entries BEGIN
        UPDATE meta SET value = value + new.size WHERE name = 'total_bytes'; END""",
    """CREATE TRIGGER IF NOT EXISTS entries_size_delete AFTER DELETE ON entries BEGIN
        UPDATE meta SET value = value - old.size WHERE name = 'total_bytes'; END""",
    """CREATE TRIGGER IF NOT EXISTS entries_size_update AFTER UPDATE OF size ON entries BEGIN
        UPDATE meta SET value = value - old.size + new.size WHERE name = 'total_bytes'; END""",
)

_UPSERT = (
    "INSERT INTO entries (key, value, size, accessed) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value, size = excluded.size, "
    "accessed = excluded.accessed"
)

DiskStatus = Literal["ok", "degraded", "closed"]


class IncompatibleFile(Exception):
    """A healthy SQLite file whose schema this version does not know: never deleted."""


def _is_transient(exc: BaseException) -> bool:
    """True for errors that say "try later" (a lock held too long), not "the file is bad"."""
    if isinstance(exc, sqlite3.ProgrammingError | sqlite3.InterfaceError):
        return True  # misuse such as a connection closed by ``close()``: not a disk fault
    return is_busy(exc)


class SqliteCacheFile(PooledSqliteFile):
    """The SQLite tier. Thread-safe; every public method is total (never raises)."""

    def __init__(self, path: Path, *, max_bytes: int, busy_timeout: float) -> None:
        if max_bytes <= 0:
            raise ValueError(f"disk_max_bytes must be > 0, got {max_bytes}")
        if busy_timeout < 0:
            raise ValueError(f"busy_timeout must be >= 0, got {busy_timeout}")
        # NORMAL is durable enough in WAL mode for a cache and avoids an fsync per commit.
        super().__init__(
            path,
            busy_timeout=busy_timeout,
            synchronous="NORMAL",
            max_idle=MAX_IDLE_CONNECTIONS,
        )
        self.max_bytes = max_bytes
        self._low_water = int(max_bytes * LOW_WATER_FRACTION)
        # Serialises recoveries so one thread rebuilds while the others skip.
        self._recover_lock = threading.Lock()
        self._pending_touches: dict[str, int] = {}
        self._recoveries: collections.deque[float] = collections.deque()
        self.status: DiskStatus = "ok"
        self.detail = f"SQLite file {path}"
        self.last_error: str | None = None
        self.hits = 0
        self.errors = 0
        self.evictions = 0
        self.rebuilds = 0
        self._open()

    # ----------------------------------------------------------------------------- public

    def get(self, key: str) -> dict[str, Any] | None:
        """The decoded value under ``key``, or ``None`` (a miss, or a disk problem)."""

        def read(conn: sqlite3.Connection) -> str | None:
            row = conn.execute("SELECT value FROM entries WHERE key = ?", (key,)).fetchone()
            return None if row is None else str(row[0])

        # Retried once after a recovery: a file replaced by another process may hold the key.
        text = self._run("get", read, retry=True)
        if text is None:
            return None
        try:
            value = json.loads(text)
        except ValueError as exc:
            value = exc
        if not isinstance(value, dict):
            # One bad row (written by something else, or damaged): drop it, report, miss.
            self._count_error()
            _log.warning("lm_cache.disk_bad_value", path=str(self.path), key=key, action="deleted")
            self._run("delete", lambda conn: conn.execute(_DELETE_ONE, (key,)), retry=False)
            return None
        with self._lock:
            self.hits += 1
            if len(self._pending_touches) < MAX_PENDING_TOUCHES:
                self._pending_touches[key] = time.time_ns()
        return value

    def put(self, key: str, payload: str) -> None:
        """Store the JSON text ``payload`` under ``key``, evicting old rows when over budget."""
        size = len(key) + len(payload.encode()) + ROW_OVERHEAD_BYTES
        if size > self._low_water:
            _log.debug("lm_cache.value_too_large", path=str(self.path), key=key, size=size)
            return
        evicted = self._run("put", lambda conn: self._put_tx(conn, key, payload, size), retry=True)
        if evicted:
            with self._lock:
                self.evictions += evicted

    def clear(self) -> None:
        """Delete every row (for every process sharing the file)."""
        with self._lock:
            self._pending_touches.clear()

        def wipe(conn: sqlite3.Connection) -> None:
            with write_tx(conn):
                conn.execute("DELETE FROM entries")

        self._run("clear", wipe, retry=False)

    def close(self) -> None:
        """Apply pending touches and close every connection (in-use ones when returned)."""
        if self.status == "ok":
            self._run("close", self._flush_touches_tx, retry=False)
        self._drop_connections(mark_closed=self._mark_closed)

    def _mark_closed(self) -> None:
        self.status = "closed"
        self.detail = f"closed (was {self.path})"

    # -------------------------------------------------------------------------- internals

    def _run(self, op: str, fn: Callable[[sqlite3.Connection], T], retry: bool) -> T | None:
        """Run ``fn`` on a pooled connection; on a disk problem recover and maybe retry once."""
        for attempt in range(2 if retry else 1):
            generation = self._generation
            if self.status != "ok":
                return None
            try:
                self._check_file()
                conn = self._acquire()
                try:
                    return fn(conn)
                finally:
                    self._release(conn, generation)
            except (sqlite3.Error, OSError, FileProblem, IncompatibleFile) as exc:
                self._count_error()
                if _is_transient(exc):
                    self._remember(exc)
                    _log.warning(
                        "lm_cache.disk_busy",
                        path=str(self.path),
                        op=op,
                        error=describe(exc),
                        action="skipped",
                    )
                    return None
                if not self._recover(op, exc, generation) or attempt == 1:
                    return None
        return None

    def _accepts_connections(self) -> bool:
        return self.status == "ok"

    def _attach_with_retries(self) -> None:
        attach_with_retries(self._attach)

    def _attach(self) -> None:
        """Open (creating if needed) the file at ``path`` and make it the current one."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = self._connect()
        try:
            conn.execute("PRAGMA journal_mode=WAL").fetchone()
            with write_tx(conn):
                for statement in _SCHEMA:
                    conn.execute(statement)
                row = conn.execute("SELECT value FROM meta WHERE name = 'schema_version'")
                version = row.fetchone()
            if version is None or version[0] != SCHEMA_VERSION:
                raise IncompatibleFile(
                    f"{self.path} has cache schema version {version and version[0]}, this "
                    f"version reads {SCHEMA_VERSION}; delete the file or use another path"
                )
            fd, st = self._open_descriptor()
        except BaseException:
            conn.close()
            raise

        def mark_ok() -> None:
            self.status = "ok"
            self.detail = f"SQLite file {self.path}"

        self._swap_in(conn, fd, st, mark_ok)

    def _recover(self, op: str, exc: BaseException, generation: int) -> bool:
        """Reopen or rebuild the file after ``exc``; False if the disk tier is now disabled."""
        with self._recover_lock:
            if generation != self._generation:
                # Another thread already recovered (or disabled) since this operation began.
                return self.status == "ok"
            self._remember(exc)
            if self.status != "ok":
                return False
            now = time.monotonic()
            while self._recoveries and now - self._recoveries[0] > RECOVERY_WINDOW_S:
                self._recoveries.popleft()
            if len(self._recoveries) >= MAX_RECOVERIES:
                self._disable(
                    op,
                    exc,
                    reason=f"more than {MAX_RECOVERIES} recoveries in {RECOVERY_WINDOW_S:.0f} s",
                )
                return False
            self._recoveries.append(now)
            bad_identity = self._identity
            self._drop_connections()
            kind = exc.kind if isinstance(exc, FileProblem) else "error"
            try:
                action = self._reattach(kind, bad_identity)
            except Exception as rebuild_exc:
                if _is_transient(rebuild_exc):
                    # Only a lock held too long: no connections now, the next operation
                    # opens fresh ones (and recovers again if the file really is bad).
                    self._remember(rebuild_exc)
                    _log.warning(
                        "lm_cache.disk_busy",
                        path=str(self.path),
                        op=op,
                        error=describe(rebuild_exc),
                        action="skipped",
                    )
                    return False
                self._disable(op, exc, reason=f"recovery failed: {describe(rebuild_exc)}")
                return False
            with self._lock:
                self.rebuilds += 1
            _log.warning(
                "lm_cache.disk_error",
                path=str(self.path),
                op=op,
                error=describe(exc),
                action=action,
            )
            return True

    def _open(self) -> None:
        """First open: a file that will not open is rebuilt; one that never works, disabled."""
        try:
            self._attach_with_retries()
            return
        except IncompatibleFile as exc:
            self._count_error()
            self._disable("open", exc)
            return
        except Exception as exc:
            self._count_error()
            self._remember(exc)
            if _is_transient(exc):
                # Locked by another process for longer than the timeout: not a broken file.
                # Operations connect lazily and recover if the file turns out to be bad.
                _log.warning(
                    "lm_cache.disk_busy",
                    path=str(self.path),
                    op="open",
                    error=describe(exc),
                    action="skipped",
                )
                return
            first = exc
        try:
            action = self._reattach("error", None)
        except Exception as exc:
            self._disable("open", first, reason=f"recovery failed: {describe(exc)}")
            return
        with self._lock:
            self.rebuilds += 1
        _log.warning(
            "lm_cache.disk_error",
            path=str(self.path),
            op="open",
            error=describe(first),
            action=action,
        )

    def _reattach(
        self,
        kind: Literal["missing", "replaced", "corrupt", "unopened", "error"],
        bad_identity: tuple[int, int] | None,
    ) -> Literal["reopened", "rebuilt"]:
        """Make a working file current again after a problem of ``kind``; raise if impossible."""
        if kind == "missing":
            self._remove_orphan_sidecars()
            self._attach_with_retries()
            return "rebuilt"
        if kind == "corrupt":
            self._quarantine(bad_identity)
            self._attach_with_retries()
            return "rebuilt"
        # Replaced by another process, or an SQLite error: first try the file that is at the
        # path now; only a file that fails to open is discarded.
        try:
            self._attach_with_retries()
            return "reopened"
        except IncompatibleFile:
            raise
        except (sqlite3.Error, OSError, FileProblem) as exc:
            if _is_transient(exc):
                raise
        self._quarantine(None)
        self._attach_with_retries()
        return "rebuilt"

    def _quarantine(self, bad_identity: tuple[int, int] | None) -> None:
        """Delete the broken file and its WAL sidecars (a cache holds nothing irreplaceable).

        With ``bad_identity`` given, the file is deleted only if it is still that file: another
        process may already have put a fresh one in its place.
        """
        same = is_same_file(self.path, bad_identity)
        if same is None:
            self._remove_orphan_sidecars()
            return
        if not same:
            return
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(f"{self.path}{suffix}")

    def _disable(self, op: str, exc: BaseException, reason: str | None = None) -> None:
        self._drop_connections()
        why = reason or describe(exc)
        with self._lock:
            self.status = "degraded"
            self.last_error = describe(exc)
            self.detail = f"disk tier disabled, caching in memory only: {self.path} failed ({why})"
        _log.warning(
            "lm_cache.disk_error",
            path=str(self.path),
            op=op,
            error=describe(exc),
            action="memory_only",
            detail=self.detail,
        )

    def _put_tx(self, conn: sqlite3.Connection, key: str, payload: str, size: int) -> int:
        """Upsert one row (and pending touches); evict a batch if over budget. Rows evicted."""
        with self._lock:
            touches, self._pending_touches = self._pending_touches, {}
        now = time.time_ns()
        with write_tx(conn):
            if touches:
                conn.executemany(_TOUCH, [(t, k, t) for k, t in touches.items()])
            conn.execute(_UPSERT, (key, payload, size, now))
            total = _total_bytes(conn)
            if total <= self.max_bytes:
                return 0
            return _evict(conn, total - self._low_water, keep=key)

    def _flush_touches_tx(self, conn: sqlite3.Connection) -> None:
        with self._lock:
            touches, self._pending_touches = self._pending_touches, {}
        if touches:
            with write_tx(conn):
                conn.executemany(_TOUCH, [(t, k, t) for k, t in touches.items()])

    def _count_error(self) -> None:
        with self._lock:
            self.errors += 1

    def _remember(self, exc: BaseException) -> None:
        with self._lock:
            self.last_error = describe(exc)


_TOUCH = "UPDATE entries SET accessed = ? WHERE key = ? AND accessed < ?"
_DELETE_ONE = "DELETE FROM entries WHERE key = ?"


def _total_bytes(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT value FROM meta WHERE name = 'total_bytes'").fetchone()
    return int(row[0]) if row is not None else 0


def _evict(conn: sqlite3.Connection, need: int, keep: str) -> int:
    """Delete least recently used rows (except ``keep``) until ``need`` bytes are freed."""
    victims: list[tuple[str]] = []
    freed = 0
    cursor = conn.execute("SELECT key, size FROM entries ORDER BY accessed")
    try:
        while freed < need:
            rows = cursor.fetchmany(256)
            if not rows:
                break
            for key, size in rows:
                if key == keep:
                    continue
                victims.append((key,))
                freed += int(size)
                if freed >= need:
                    break
    finally:
        cursor.close()
    conn.executemany(_DELETE_ONE, victims)
    return len(victims)
