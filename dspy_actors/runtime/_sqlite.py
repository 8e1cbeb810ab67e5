"""One SQLite file shared by many threads and processes, that survives being deleted or broken.

Shared by the parameter store, the dead-letter store and the run store (through
``_store_backend``). How it stays correct:

* WAL journal mode (readers never block the writer; processes share the file) and a
  ``busy_timeout`` on every connection. Writes take the write lock up front (``BEGIN
  IMMEDIATE``), so two writers never deadlock upgrading a read lock.
* A pool of connections, each used by one thread at a time (``check_same_thread`` is off only
  so a connection can move between threads *between* uses, never during one). After a fork
  the child never touches its parent's connections.
* Before every operation the file at ``path`` is checked (inode and SQLite header): an open
  connection keeps working on a deleted file and never re-reads pages it has cached, so
  without this check a deleted store would go on "working" on a ghost.

What happens on failure (no raw ``sqlite3`` error ever reaches a caller):

* File deleted: a new, empty file is created. File corrupt (bad header, ``SQLITE_CORRUPT``,
  ``SQLITE_NOTADB``): it is *moved aside* (``<path>.corrupt-<time>``, never deleted: it may
  hold the only copy of someone's optimized program) and a new one created. File replaced by
  another process (which rebuilt it): reopened. Each is a structlog warning, counted in
  :meth:`SqliteFile.health`, and -- since the rows are gone -- reported as lost history.
* Lock held by another process longer than ``busy_timeout``, an unwritable disk, a file from
  a newer schema, or a closed store: :class:`StoreError` with what happened and what to do.

Over 400 lines: one SQLite file's whole recovery story (pool, file identity checks, move-
aside, errors) is one state machine; split, its invariants would span files.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

from dspy_actors import redaction
from dspy_actors._sqlite_file import (
    FileProblem,
    PooledSqliteFile,
    attach_with_retries,
    describe,
    is_busy,
    is_corrupt,
    is_same_file,
    write_tx,
)

__all__ = ["SqliteFile", "StoreError", "StoreHealth"]

T = TypeVar("T")

_log = redaction.get_logger("dspy_actors.runtime.store")

# Idle connections kept for reuse; more are opened under load and closed when returned.
_MAX_IDLE = 8

_META_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS dspy_actors_meta (
        store TEXT NOT NULL,
        name TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (store, name)
    )""",
)

StoreStatus = Literal["ok", "closed"]


class StoreError(RuntimeError):
    """A store could not do what was asked: its file stayed locked by another process for
    longer than the busy timeout, the disk refused a write, the file belongs to a newer
    version, or the store was closed. The message says which, and what to do."""


@dataclass(frozen=True, slots=True)
class StoreHealth:
    """How a store's file is doing.

    ``history_lost`` is True once this store found its file deleted, corrupt or rebuilt by
    another process: what was saved before is gone (a corrupt file is kept aside, see
    ``quarantined``). ``rebuilds`` counts new files created in place of a lost one, and
    ``reopens`` files that another process had rebuilt. ``errors`` counts every failed
    attempt (recovered or not); ``last_error`` describes the latest.
    """

    path: str
    status: StoreStatus
    history_lost: bool
    rebuilds: int
    reopens: int
    errors: int
    last_error: str | None
    quarantined: tuple[str, ...]
    created_at: float | None


class _Incompatible(Exception):
    """A healthy file written by a newer schema: never moved, never rebuilt."""


class SqliteFile(PooledSqliteFile):
    """The file of one store (``store`` names it in the shared meta table and in logs).

    ``schema`` is a list of idempotent statements (``CREATE ... IF NOT EXISTS``) run when a
    file is opened or created; ``schema_version`` is recorded and checked, so a file written
    by a newer version is refused rather than misread. Thread-safe.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        store: str,
        schema: Sequence[str],
        schema_version: int,
        busy_timeout: float = 5.0,
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
    ) -> None:
        if busy_timeout < 0:
            raise ValueError(f"busy_timeout must be >= 0, got {busy_timeout!r}")
        super().__init__(
            Path(path), busy_timeout=busy_timeout, synchronous=synchronous, max_idle=_MAX_IDLE
        )
        self.store = store
        self._schema = tuple(schema)
        self._schema_version = schema_version
        # One recovery at a time; the others wait and then retry on the recovered file.
        self._recover_lock = threading.Lock()
        self._file_id: str | None = None
        self._created_at: float | None = None
        self._closed = False
        self._history_lost = False
        self._rebuilds = 0
        self._reopens = 0
        self._errors = 0
        self._last_error: str | None = None
        self._quarantined: list[str] = []
        self._open_first()

    # ----------------------------------------------------------------------------- public

    def read(self, op: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` on a connection (autocommit: each statement sees the latest commit)."""
        return self._run(op, fn)

    def write(self, op: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` inside one write transaction (all or nothing)."""

        def in_tx(conn: sqlite3.Connection) -> T:
            with write_tx(conn):
                return fn(conn)

        return self._run(op, in_tx)

    def note_error(self, detail: str) -> None:
        """Count a problem the store found in its data (a damaged row, say)."""
        with self._lock:
            self._errors += 1
            self._last_error = detail

    def health(self) -> StoreHealth:
        with self._lock:
            return StoreHealth(
                path=str(self.path),
                status="closed" if self._closed else "ok",
                history_lost=self._history_lost,
                rebuilds=self._rebuilds,
                reopens=self._reopens,
                errors=self._errors,
                last_error=self._last_error,
                quarantined=tuple(self._quarantined),
                created_at=self._created_at,
            )

    def close(self) -> None:
        """Close every connection (ones in use close when returned). Idempotent."""
        self._drop_connections(mark_closed=self._mark_closed)

    def _mark_closed(self) -> None:
        self._closed = True

    # -------------------------------------------------------------------------- internals

    def _run(self, op: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        # Two attempts: the second runs on the file a recovery just reopened or rebuilt.
        for attempt in (1, 2):
            if self._closed:
                raise StoreError(f"{self.store} at {self.path} is closed")
            generation = self._generation
            try:
                self._check_file()
                conn = self._acquire()
                try:
                    return fn(conn)
                finally:
                    self._release(conn, generation)
            except (sqlite3.Error, OSError, FileProblem, _Incompatible) as exc:
                self._count(exc)
                if isinstance(exc, _Incompatible):
                    raise StoreError(str(exc)) from None
                if is_busy(exc):
                    raise StoreError(
                        f"{self.store} at {self.path}: {op} gave up after waiting "
                        f"{self._busy_timeout:g} s for a lock held by another connection "
                        f"({describe(exc)}); try again, or raise busy_timeout"
                    ) from exc
                if isinstance(exc, sqlite3.ProgrammingError | sqlite3.InterfaceError):
                    # Misuse (e.g. a connection closed under us by close()): not a disk fault.
                    raise StoreError(f"{self.store} at {self.path}: {describe(exc)}") from exc
                if attempt == 2:
                    raise StoreError(
                        f"{self.store} at {self.path}: {op} failed even after recovering the "
                        f"file ({describe(exc)})"
                    ) from exc
                self._recover(op, exc, generation)
        raise AssertionError("unreachable")  # pragma: no cover

    def _count(self, exc: BaseException) -> None:
        with self._lock:
            self._errors += 1
            self._last_error = describe(exc)

    def _accepts_connections(self) -> bool:
        return not self._closed

    def _attach(self) -> bool:
        """Open (creating if needed) the file at ``path`` and make it current.

        Returns True if this is the file we had before (same file id), False if it is another.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return attach_with_retries(self._attach_once)

    def _attach_once(self) -> bool:
        conn = self._connect()
        try:
            conn.execute("PRAGMA journal_mode=WAL").fetchone()
            with write_tx(conn):
                for statement in (*_META_SCHEMA, *self._schema):
                    conn.execute(statement)
                meta = self._ensure_meta(conn)
            fd, st = self._open_descriptor()
        except BaseException:
            conn.close()
            raise
        file_id, created_at = meta
        same = self._file_id is None or self._file_id == file_id

        def remember_file() -> None:
            self._file_id = file_id
            self._created_at = created_at

        self._swap_in(conn, fd, st, remember_file)
        return same

    def _ensure_meta(self, conn: sqlite3.Connection) -> tuple[str, float]:
        rows = dict(
            conn.execute(
                "SELECT name, value FROM dspy_actors_meta WHERE store = ?", (self.store,)
            ).fetchall()
        )
        if not rows:
            rows = {
                "schema_version": str(self._schema_version),
                "file_id": uuid.uuid4().hex,
                "created_at": repr(time.time()),
            }
            conn.executemany(
                "INSERT INTO dspy_actors_meta (store, name, value) VALUES (?, ?, ?)",
                [(self.store, k, v) for k, v in rows.items()],
            )
        version = rows.get("schema_version")
        if version != str(self._schema_version):
            raise _Incompatible(
                f"{self.path} holds a {self.store} of schema version {version}, this version "
                f"reads {self._schema_version}; use another path, or move that file away"
            )
        try:
            return str(rows["file_id"]), float(rows["created_at"])
        except (KeyError, ValueError) as exc:
            raise FileProblem("corrupt", f"{self.path}: bad {self.store} metadata") from exc

    def _open_first(self) -> None:
        try:
            self._attach()
            return
        except _Incompatible as exc:
            self.close()
            raise StoreError(str(exc)) from None
        except (sqlite3.Error, OSError, FileProblem) as exc:
            self._count(exc)
            if is_busy(exc):
                # Locked by another process past the timeout: not a broken file. The first
                # operation opens it (and recovers then if it really is broken).
                _log.warning(
                    "store.busy",
                    store=self.store,
                    path=str(self.path),
                    op="open",
                    error=describe(exc),
                    action="deferred",
                )
                return
            if not is_corrupt(exc):
                self.close()
                raise StoreError(
                    f"cannot open {self.store} at {self.path}: {describe(exc)}"
                ) from exc
            first = exc
        try:
            self._rebuild("open", first, None)
        except (sqlite3.Error, OSError, FileProblem, _Incompatible) as exc:
            self.close()
            raise StoreError(
                f"cannot open {self.store} at {self.path}: {describe(first)}; creating a new "
                f"file failed too: {describe(exc)}"
            ) from exc

    def _recover(self, op: str, exc: BaseException, generation: int) -> None:
        """Make a working file current again after ``exc``; raise StoreError if impossible."""
        with self._recover_lock:
            if generation != self._generation or self._closed:
                return  # Another thread recovered (or we closed) since this operation began.
            bad_identity = self._identity
            kind = exc.kind if isinstance(exc, FileProblem) else "error"
            try:
                if is_corrupt(exc):
                    # Move the file aside *before* closing our connections: the last one to
                    # close would checkpoint its WAL into the broken file, unless SQLite sees
                    # that the file has moved (then it leaves both alone, as evidence).
                    self._quarantine(bad_identity)
                    self._drop_connections()
                    self._attach()
                    self._lost(op, exc, "rebuilt")
                    return
                self._drop_connections()
                if kind == "missing":
                    self._remove_orphan_sidecars()
                    self._attach()
                    self._lost(op, exc, "rebuilt")
                else:
                    # Replaced, never opened, or some other error: first try whatever file is
                    # at the path now; only one that fails to open is moved aside.
                    try:
                        same = self._attach()
                    except (sqlite3.DatabaseError, FileProblem) as reopen_exc:
                        if is_busy(reopen_exc) or not is_corrupt(reopen_exc):
                            raise
                        self._rebuild(op, reopen_exc, None)
                    else:
                        if not same:
                            self._lost(op, exc, "reopened")
            except _Incompatible as bad:
                raise StoreError(str(bad)) from None
            except (sqlite3.Error, OSError, FileProblem) as failed:
                self._count(failed)
                raise StoreError(
                    f"{self.store} at {self.path}: {op} failed ({describe(exc)}) and so did "
                    f"reopening the file ({describe(failed)})"
                ) from failed

    def _rebuild(self, op: str, exc: BaseException, bad_identity: tuple[int, int] | None) -> None:
        self._quarantine(bad_identity)
        self._attach()
        self._lost(op, exc, "rebuilt")

    def _lost(self, op: str, exc: BaseException, action: Literal["rebuilt", "reopened"]) -> None:
        with self._lock:
            self._history_lost = True
            if action == "rebuilt":
                self._rebuilds += 1
            else:
                self._reopens += 1
        _log.warning(
            "store.history_lost",
            store=self.store,
            path=str(self.path),
            op=op,
            error=describe(exc),
            action=action,
        )

    def _quarantine(self, bad_identity: tuple[int, int] | None) -> None:
        """Move the broken file (and its WAL sidecars) aside, unless already replaced."""
        same = is_same_file(self.path, bad_identity)
        if same is None:
            self._remove_orphan_sidecars()
            return
        if not same:
            return  # Another process already put a fresh file in its place.
        target = f"{self.path}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
        os.replace(self.path, target)
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.replace(f"{self.path}{suffix}", f"{target}{suffix}")
        with self._lock:
            self._quarantined.append(target)
