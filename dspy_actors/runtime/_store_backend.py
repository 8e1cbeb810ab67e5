"""The small interface every store (parameters, dead letters, runs) is written against, and
the choice of backend behind it: a SQLite file (the default) or a PostgreSQL database.

A store runs its SQL through :meth:`StoreBackend.read` and :meth:`StoreBackend.write` with a
function of a :class:`Connection` (``execute(sql, params)``; placeholders are ``?`` on both
backends). It writes SQL both engines accept (``INSERT ... ON CONFLICT ... DO UPDATE``,
``RETURNING``); where the two differ (column types, an insertion counter), it gives one
schema per backend. Where the store lives is a path (SQLite), a ``postgresql://`` URL (a
database of the store's own) or a :class:`~dspy_actors.runtime._postgres.PostgresDatabase`
(one connection pool shared by an app's stores).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, Self, TypeVar

from dspy_actors._postgres_url import is_database_url
from dspy_actors.runtime._sqlite import SqliteFile, StoreError, StoreHealth

__all__ = [
    "Connection",
    "Rows",
    "Store",
    "StoreBackend",
    "StoreError",
    "StoreHealth",
    "is_database_url",
]

T = TypeVar("T")


class Rows(Protocol):
    """What a statement returns (a sqlite3 or psycopg cursor)."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Connection(Protocol):
    """A connection as a store's SQL sees it (``?`` placeholders on both backends)."""

    def execute(self, sql: str, parameters: Any = ..., /) -> Rows: ...


class StoreBackend(Protocol):
    """Where a store's rows live. ``read`` runs autocommit; ``write`` runs in one
    transaction (all or nothing). Every failure is a :class:`StoreError`."""

    @property
    def where(self) -> str:
        """The file path or the database URL (without a password), for messages."""
        ...

    @property
    def is_postgres(self) -> bool: ...

    def read(self, op: str, fn: Callable[[Any], T]) -> T: ...

    def write(self, op: str, fn: Callable[[Any], T]) -> T: ...

    def note_error(self, detail: str) -> None: ...

    def health(self) -> StoreHealth: ...

    def close(self) -> None: ...


class _SqliteBackend:
    """A :class:`SqliteFile` as a :class:`StoreBackend`."""

    is_postgres = False

    def __init__(self, file: SqliteFile) -> None:
        self.file = file

    @property
    def where(self) -> str:
        return str(self.file.path)

    def read(self, op: str, fn: Callable[[Any], T]) -> T:
        return self.file.read(op, fn)

    def write(self, op: str, fn: Callable[[Any], T]) -> T:
        return self.file.write(op, fn)

    def note_error(self, detail: str) -> None:
        self.file.note_error(detail)

    def health(self) -> StoreHealth:
        return self.file.health()

    def close(self) -> None:
        self.file.close()


def open_backend(
    where: Any,
    *,
    store: str,
    schema: Sequence[str],
    pg_schema: Sequence[str],
    schema_version: int,
    busy_timeout: float,
) -> StoreBackend:
    """The backend of one store at ``where`` (see the module docstring)."""
    if is_database_url(where) or not isinstance(where, str | os.PathLike):
        from dspy_actors.runtime._postgres import PostgresDatabase, PostgresStoreBackend

        owned = is_database_url(where)
        database = PostgresDatabase(where) if owned else where
        if not isinstance(database, PostgresDatabase):
            raise TypeError(
                f"a store lives at a path, a postgresql:// URL or a PostgresDatabase, "
                f"not {type(where).__name__}"
            )
        return PostgresStoreBackend(
            database, store=store, schema=pg_schema, schema_version=schema_version, owned=owned
        )
    file = SqliteFile(
        where, store=store, schema=schema, schema_version=schema_version, busy_timeout=busy_timeout
    )
    return _SqliteBackend(file)


class Store:
    """What every store shares: its backend, health, close, ``with``. Subclasses pass their
    store name, both schemas and the schema version."""

    def __init__(
        self,
        where: Any,
        *,
        store: str,
        schema: Sequence[str],
        pg_schema: Sequence[str],
        schema_version: int,
        busy_timeout: float,
    ) -> None:
        self._file = open_backend(
            where,
            store=store,
            schema=schema,
            pg_schema=pg_schema,
            schema_version=schema_version,
            busy_timeout=busy_timeout,
        )
        # A path for a SQLite store (as before); the URL, without a password, for PostgreSQL.
        self.path: Path | str = (
            self._file.where if self._file.is_postgres else Path(self._file.where)
        )

    def health(self) -> StoreHealth:
        """The store's state: rebuilds, lost history, errors (see :class:`StoreHealth`)."""
        return self._file.health()

    def close(self) -> None:
        """Close the store's connections; later calls raise StoreError. Idempotent."""
        self._file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"
