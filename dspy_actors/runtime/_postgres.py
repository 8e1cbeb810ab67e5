"""Stores in PostgreSQL: one connection pool per app, shared by its stores (psycopg 3).

Several processes (replicas of a service, on one machine or many) pointing at one database
share its stores: what one saves, the others read. How it stays correct:

* Writes run in one transaction each (all or nothing); reads run autocommit. Schemas are
  created on first use under an advisory lock (two processes starting together never race
  on ``CREATE TABLE``), with the schema version checked as in a SQLite file.
* A lost connection (the server restarted, a backend terminated, the network cut) is
  retried on a fresh connection until ``retry_for`` seconds have passed; the pool checks a
  connection before handing it out. A write that fails before its commit wrote nothing
  (PostgreSQL rolled it back); one that fails *during* its commit is reported as such (its
  outcome is unknown), never retried blindly.
* A database unreachable at start does not stop the app: the pool connects in the
  background, and only operations that need the store wait (then fail clearly).

No raw psycopg error reaches a caller: a store operation that cannot be done raises
:class:`~dspy_actors.runtime._sqlite.StoreError` naming the store, the database (without
its password) and whether anything was written.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from dspy_actors import redaction
from dspy_actors._postgres_url import display_url
from dspy_actors.runtime._sqlite import StoreError, StoreHealth

__all__ = ["PostgresDatabase", "PostgresStoreBackend", "display_url"]

T = TypeVar("T")

_log = redaction.get_logger("dspy_actors.runtime.store")

_META_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS dspy_actors_meta (
        store TEXT NOT NULL,
        name TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (store, name)
    )""",
)
# pg_advisory_xact_lock key for schema creation ("dspyact" in ASCII): one creator at a time.
_SCHEMA_LOCK = 0x64737079616374


def _describe(exc: BaseException) -> str:
    return redaction.redact(f"{type(exc).__name__}: {str(exc).strip()}")


class _QmarkConnection:
    """A psycopg connection taking ``?`` placeholders, as a store's SQL is written."""

    __slots__ = ("_conn",)

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def execute(self, sql: str, parameters: Any = (), /) -> psycopg.Cursor[Any]:
        return self._conn.execute(sql.replace("?", "%s"), parameters)


class PostgresDatabase:
    """A connection pool on one PostgreSQL database, shared by an app's stores. Thread-safe.

    ``retry_for``: how long an operation keeps retrying a lost connection or an unreachable
    server before it fails with StoreError. ``max_size``: connections at most.
    """

    def __init__(
        self,
        url: str,
        *,
        max_size: int = 10,
        retry_for: float = 10.0,
        connect_timeout: float = 5.0,
    ) -> None:
        if retry_for < 0:
            raise ValueError(f"retry_for must be >= 0, got {retry_for!r}")
        self.url = url
        self.where = display_url(url)
        self.retry_for = retry_for
        self.connect_timeout = connect_timeout
        self._schemas: set[str] = set()
        self._schema_lock = threading.Lock()
        self._closed = False
        self.pool = ConnectionPool(
            url,
            min_size=1,
            max_size=max_size,
            open=False,
            kwargs={"autocommit": True, "connect_timeout": max(1, round(connect_timeout))},
            check=ConnectionPool.check_connection,
            name="dspy-actors-pg",
            # Retry connecting for as long as the app lives: a server down at start, or for
            # a while, is reached once it is back.
            reconnect_timeout=365 * 24 * 3600.0,
        )
        # Not waiting: an unreachable server must not stop the app from starting.
        self.pool.open(wait=False)

    @property
    def closed(self) -> bool:
        return self._closed

    def run(
        self,
        store: str,
        op: str,
        fn: Callable[[Any], T],
        *,
        write: bool,
        ensure: Callable[[psycopg.Connection[Any]], None],
    ) -> T:
        """``fn`` on a pooled connection (in one transaction if ``write``), retried on a
        lost connection until ``retry_for`` has passed."""
        deadline = time.monotonic() + self.retry_for
        pause = 0.05
        attempts = 0
        while True:
            if self._closed:
                raise StoreError(f"{store} at {self.where} is closed")
            attempts += 1
            committing = False
            try:
                with self.pool.connection(timeout=max(0.05, deadline - time.monotonic())) as conn:
                    ensure(conn)
                    wrapped = _QmarkConnection(conn)
                    if not write:
                        return fn(wrapped)
                    with conn.transaction():
                        result = fn(wrapped)
                        committing = True
                    return result
            except (psycopg.OperationalError, PoolTimeout) as exc:
                if committing:
                    raise StoreError(
                        f"{store} at {self.where}: {op}: the connection was lost while "
                        f"committing ({_describe(exc)}); whether it was written is unknown "
                        "(read it back before writing it again)"
                    ) from exc
                if self._closed:
                    raise StoreError(f"{store} at {self.where} is closed") from None
                if time.monotonic() + pause >= deadline:
                    raise StoreError(
                        f"{store} at {self.where}: {op} failed: the database was unreachable "
                        f"for {self.retry_for:g} s over {attempts} attempt(s) "
                        f"({self._reason(exc)}); "
                        + ("nothing was written" if write else "nothing was read")
                    ) from exc
                _log.warning(
                    "store.retry", store=store, database=self.where, op=op, error=_describe(exc)
                )
                time.sleep(pause)
                pause = min(pause * 2, 1.0)
            except psycopg.Error as exc:
                raise StoreError(
                    f"{store} at {self.where}: {op} failed ({_describe(exc)})"
                    + ("; nothing was written" if write else "")
                ) from exc

    def _reason(self, exc: BaseException) -> str:
        """Why the pool gave no connection: a direct connection attempt's own error."""
        if not isinstance(exc, PoolTimeout):
            return _describe(exc)
        try:
            psycopg.connect(self.url, connect_timeout=2).close()
        except psycopg.Error as direct:
            return _describe(direct)
        return _describe(exc)

    def ensure_schema(
        self,
        conn: psycopg.Connection[Any],
        store: str,
        schema: Sequence[str],
        schema_version: int,
    ) -> None:
        """Create ``store``'s tables if missing and check its schema version (once)."""
        if store in self._schemas:
            return
        with self._schema_lock:
            if store in self._schemas:
                return
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                for statement in (*_META_SCHEMA, *schema):
                    conn.execute(statement)
                row = conn.execute(
                    "SELECT value FROM dspy_actors_meta WHERE store = %s "
                    "AND name = 'schema_version'",
                    (store,),
                ).fetchone()
                if row is None:
                    conn.execute(
                        "INSERT INTO dspy_actors_meta (store, name, value) VALUES "
                        "(%s, 'schema_version', %s), (%s, 'created_at', %s)",
                        (store, str(schema_version), store, repr(time.time())),
                    )
                elif row[0] != str(schema_version):
                    raise StoreError(
                        f"{self.where} holds a {store} of schema version {row[0]}, this "
                        f"version reads {schema_version}; use another database"
                    )
            self._schemas.add(store)

    def close(self) -> None:
        """Close the pool (its connections and threads). Idempotent."""
        if not self._closed:
            self._closed = True
            self.pool.close(timeout=5.0)

    def __repr__(self) -> str:
        return f"PostgresDatabase({self.where!r})"


class PostgresStoreBackend:
    """One store's view of a :class:`PostgresDatabase` (a StoreBackend)."""

    is_postgres = True

    def __init__(
        self,
        database: PostgresDatabase,
        *,
        store: str,
        schema: Sequence[str],
        schema_version: int,
        owned: bool,
    ) -> None:
        self.database = database
        self.store = store
        self._schema = tuple(schema)
        self._schema_version = schema_version
        self._owned = owned
        self._lock = threading.Lock()
        self._closed = False
        self._errors = 0
        self._last_error: str | None = None

    @property
    def where(self) -> str:
        return self.database.where

    def _ensure(self, conn: psycopg.Connection[Any]) -> None:
        self.database.ensure_schema(conn, self.store, self._schema, self._schema_version)

    def _run(self, op: str, fn: Callable[[Any], T], write: bool) -> T:
        if self._closed:
            raise StoreError(f"{self.store} at {self.where} is closed")
        try:
            return self.database.run(self.store, op, fn, write=write, ensure=self._ensure)
        except StoreError as exc:
            self.note_error(str(exc))
            raise

    def read(self, op: str, fn: Callable[[Any], T]) -> T:
        return self._run(op, fn, write=False)

    def write(self, op: str, fn: Callable[[Any], T]) -> T:
        return self._run(op, fn, write=True)

    def note_error(self, detail: str) -> None:
        with self._lock:
            self._errors += 1
            self._last_error = detail

    def health(self) -> StoreHealth:
        with self._lock:
            return StoreHealth(
                path=self.where,
                status="closed" if self._closed or self.database.closed else "ok",
                history_lost=False,
                rebuilds=0,
                reopens=0,
                errors=self._errors,
                last_error=self._last_error,
                quarantined=(),
                created_at=None,
            )

    def close(self) -> None:
        """This store stops; the pool closes with it only if the store opened it."""
        self._closed = True
        if self._owned:
            self.database.close()
