"""The parameter store: learned parameters of served programs, versioned, in SQLite.

A served program's learned state (demos, instructions: what ``Module.dump_state()`` returns)
is saved here, so an actor that restarts reloads it and comes back optimized, and a hot
upgrade is one ``save`` away. Every save is a new version; history is kept (optionally only
the last ``keep_versions``). Version numbers of a program only ever go up, even across
``delete``, so a number seen once never names another state.

States are JSON (never pickle: loading can never run code) and must not contain anything
that looks like a credential: a key such as ``api_key`` or ``authorization`` anywhere in the
state is refused with a ``ValueError`` naming where it is.

Robustness (see ``_sqlite``): many threads and processes may share the file; a deleted or
corrupt file is rebuilt (a corrupt one is moved aside), which :meth:`ParameterStore.health`
reports as lost history, and ``load`` then returns ``None``. No raw ``sqlite3`` error reaches
a caller: an operation that cannot be done raises :class:`StoreError`.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dspy_actors import redaction
from dspy_actors.runtime._sqlite import StoreError, StoreHealth
from dspy_actors.runtime._store_backend import Connection, Store

if TYPE_CHECKING:
    from dspy_actors.runtime._postgres import PostgresDatabase

__all__ = [
    "ParameterStore",
    "StoreError",
    "StoreHealth",
    "VersionInfo",
    "looks_like_secret",
]

_log = redaction.get_logger("dspy_actors.runtime.store")

SCHEMA_VERSION = 1
_STORE = "parameter_store"

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS parameter_versions (
        program TEXT NOT NULL,
        version INTEGER NOT NULL,
        state TEXT NOT NULL,
        size INTEGER NOT NULL,
        saved_at REAL NOT NULL,
        PRIMARY KEY (program, version)
    )""",
    # The last version number ever given per program; outlives delete() so numbers never
    # come back.
    """CREATE TABLE IF NOT EXISTS parameter_counters (
        program TEXT PRIMARY KEY,
        last_version INTEGER NOT NULL
    )""",
)
_PG_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS parameter_versions (
        program TEXT NOT NULL,
        version BIGINT NOT NULL,
        state TEXT NOT NULL,
        size BIGINT NOT NULL,
        saved_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (program, version)
    )""",
    """CREATE TABLE IF NOT EXISTS parameter_counters (
        program TEXT PRIMARY KEY,
        last_version BIGINT NOT NULL
    )""",
)

SAVED_CHANNEL = "dspy_actors_parameters"
"""The PostgreSQL channel told of every save (payload: JSON ``{"program", "version"}``), in
the saving transaction: replicas sharing the database follow upgrades through it."""

# Normalised (lowercase, letters and digits only) key names that hold credentials, and
# endings that do ("openai_api_key", "client_secret", "x-api-key", "proxy_authorization").
_SECRET_NAMES = frozenset({"cookie", "setcookie", "credentials", "passwd"})
_SECRET_ENDINGS = (
    "apikey",
    "apitoken",
    "authorization",
    "authtoken",
    "accesstoken",
    "refreshtoken",
    "sessiontoken",
    "bearertoken",
    "idtoken",
    "secret",
    "secretkey",
    "secretaccesskey",
    "privatekey",
    "password",
    "passphrase",
)
_NOT_ALNUM = re.compile(r"[^a-z0-9]")


def looks_like_secret(key: str) -> bool:
    """True if a mapping key with this name would hold a credential (``api_key``, ...)."""
    norm = _NOT_ALNUM.sub("", key.lower())
    return norm in _SECRET_NAMES or norm.endswith(_SECRET_ENDINGS)


def _check_json(value: Any, path: str) -> None:
    """Raise ValueError unless ``value`` is plain JSON data that loads back unchanged."""
    if value is None or isinstance(value, str | bool | int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"state is not JSON: {path or 'the state'} is {value!r}")
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(
                    f"state is not JSON: {path or 'the state'} has a {type(key).__name__} key "
                    f"{key!r} (JSON object keys are strings)"
                )
            where = f"{path}.{key}" if path else key
            if looks_like_secret(key):
                raise ValueError(
                    f"refusing to store a state with a secret-looking key at {where!r}: "
                    "credentials never belong in learned parameters (remove the key)"
                )
            _check_json(item, where)
        return
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_json(item, f"{path}[{i}]")
        return
    raise ValueError(
        f"state is not JSON: {path or 'the state'} is a {type(value).__name__} "
        "(use Module.dump_state(), which gives plain JSON data)"
    )


def encode_state(state: Mapping[str, Any]) -> str:
    """``state`` as compact JSON text, after checking it is JSON data without secrets."""
    if not isinstance(state, Mapping):
        raise ValueError(f"a state is a dict, not {type(state).__name__}")
    _check_json(state, "")
    return json.dumps(state, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """One saved version of a program's state: its number, when (epoch seconds), JSON bytes."""

    version: int
    saved_at: float
    size: int


class ParameterStore(Store):
    """Versioned learned parameters per program name, in one SQLite file or a PostgreSQL
    database (``path`` is then a ``postgresql://`` URL or a shared PostgresDatabase).
    Thread-safe.

    ``keep_versions``: keep only this many latest versions per program (None: keep all).
    ``busy_timeout``: seconds to wait for another process's write lock before StoreError.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | PostgresDatabase,
        *,
        keep_versions: int | None = None,
        busy_timeout: float = 5.0,
    ) -> None:
        if keep_versions is not None and keep_versions < 1:
            raise ValueError(f"keep_versions must be >= 1 or None, got {keep_versions!r}")
        self.keep_versions = keep_versions
        super().__init__(
            path,
            store=_STORE,
            schema=_SCHEMA,
            pg_schema=_PG_SCHEMA,
            schema_version=SCHEMA_VERSION,
            busy_timeout=busy_timeout,
        )

    def save(self, program: str, state: Mapping[str, Any]) -> int:
        """Save ``state`` as the next version of ``program``; returns its version number.

        Raises ValueError if the state is not plain JSON data or has a secret-looking key.
        """
        _check_program(program)
        text = encode_state(state)
        size = len(text.encode())
        keep = self.keep_versions

        notify = self._file.is_postgres

        def insert(conn: Connection) -> int:
            # One statement takes the next number: two writers (even in two processes) never
            # get the same one.
            (version,) = conn.execute(
                "INSERT INTO parameter_counters (program, last_version) VALUES (?, 1) "
                "ON CONFLICT (program) DO UPDATE "
                "SET last_version = parameter_counters.last_version + 1 RETURNING last_version",
                (program,),
            ).fetchone()
            version = int(version)
            conn.execute(
                "INSERT INTO parameter_versions (program, version, state, size, saved_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (program, version, text, size, time.time()),
            )
            if keep is not None:
                conn.execute(
                    "DELETE FROM parameter_versions WHERE program = ? AND version <= ?",
                    (program, version - keep),
                )
            if notify:
                # Delivered at commit, to every replica listening (runtime/_postgres_replicas.py).
                payload = json.dumps({"program": program, "version": version})
                conn.execute("SELECT pg_notify(?, ?)", (SAVED_CHANNEL, payload))
            return version

        return self._file.write("save", insert)

    def load(self, program: str, version: int | None = None) -> dict[str, Any] | None:
        """The state saved as ``version`` of ``program`` (the latest if None), or None."""
        _check_program(program)

        def select(conn: Connection) -> tuple[int, str] | None:
            if version is None:
                cursor = conn.execute(
                    "SELECT version, state FROM parameter_versions WHERE program = ? "
                    "ORDER BY version DESC LIMIT 1",
                    (program,),
                )
            else:
                cursor = conn.execute(
                    "SELECT version, state FROM parameter_versions "
                    "WHERE program = ? AND version = ?",
                    (program, version),
                )
            row = cursor.fetchone()
            return None if row is None else (int(row[0]), str(row[1]))

        found = self._file.read("load", select)
        if found is None:
            return None
        number, text = found
        try:
            state = json.loads(text)
        except ValueError as exc:
            state = exc
        if not isinstance(state, dict):
            # A damaged row (or one written by something else): report it, never crash on it.
            detail = f"version {number} of {program!r} is not a JSON object"
            self._file.note_error(detail)
            _log.warning(
                "store.bad_row",
                store=_STORE,
                path=str(self.path),
                program=program,
                version=number,
                action="ignored",
            )
            return None
        return state

    def latest_version(self, program: str) -> int | None:
        """The number of the latest saved version of ``program``, or None."""
        _check_program(program)
        row = self._file.read(
            "latest_version",
            lambda conn: conn.execute(
                "SELECT MAX(version) FROM parameter_versions WHERE program = ?", (program,)
            ).fetchone(),
        )
        return None if row is None or row[0] is None else int(row[0])

    def versions(self, program: str) -> list[VersionInfo]:
        """Every kept version of ``program``, oldest first."""
        _check_program(program)
        rows = self._file.read(
            "versions",
            lambda conn: conn.execute(
                "SELECT version, saved_at, size FROM parameter_versions WHERE program = ? "
                "ORDER BY version",
                (program,),
            ).fetchall(),
        )
        return [VersionInfo(int(v), float(t), int(s)) for v, t, s in rows]

    def delete(self, program: str) -> int:
        """Delete every version of ``program``; returns how many. Its numbers are not reused."""
        _check_program(program)

        def remove(conn: Connection) -> int:
            cursor = conn.execute("DELETE FROM parameter_versions WHERE program = ?", (program,))
            return int(cursor.rowcount)

        return self._file.write("delete", remove)

    def programs(self) -> list[str]:
        """Names of the programs with at least one saved version, sorted."""
        rows = self._file.read(
            "programs",
            lambda conn: conn.execute(
                "SELECT DISTINCT program FROM parameter_versions ORDER BY program"
            ).fetchall(),
        )
        return [str(r[0]) for r in rows]


def _check_program(program: str) -> None:
    if not isinstance(program, str) or not program:
        raise ValueError(f"a program name is a non-empty string, got {program!r}")
