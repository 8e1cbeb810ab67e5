"""Where runs keep their progress: each finished step's result and each finished LM call
of a run (_run_journal.py), with the run's status, in one SQLite file or the app's
PostgreSQL database. Thread- and process-safe, so a run started by one replica (or killed
with its process) is resumed by another from what it saved."""

from __future__ import annotations

import json
import time
from typing import Any

from dspy_actors.runtime._store_backend import Connection, Store

__all__ = ["RunStore", "SqliteCheckpointer"]

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS run_steps (
        run_id TEXT NOT NULL,
        step TEXT NOT NULL,
        seq INTEGER NOT NULL,
        data TEXT NOT NULL,
        saved_at REAL NOT NULL,
        PRIMARY KEY (run_id, step)
    )""",
    """CREATE TABLE IF NOT EXISTS runs (
        run_id TEXT PRIMARY KEY,
        optimizer TEXT NOT NULL,
        seed INTEGER NOT NULL,
        status TEXT NOT NULL,
        result TEXT,
        updated_at REAL NOT NULL
    )""",
    # Finished LM results of each run (see _run_journal.py); added to files of this schema
    # version when they are opened.
    """CREATE TABLE IF NOT EXISTS run_lm_journal (
        run_id TEXT NOT NULL,
        request TEXT NOT NULL,
        occurrence INTEGER NOT NULL,
        response TEXT NOT NULL,
        saved_at REAL NOT NULL,
        PRIMARY KEY (run_id, request, occurrence)
    )""",
)
_PG_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS run_steps (
        run_id TEXT NOT NULL,
        step TEXT NOT NULL,
        seq BIGINT NOT NULL,
        data TEXT NOT NULL,
        saved_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (run_id, step)
    )""",
    """CREATE TABLE IF NOT EXISTS runs (
        run_id TEXT PRIMARY KEY,
        optimizer TEXT NOT NULL,
        seed BIGINT NOT NULL,
        status TEXT NOT NULL,
        result TEXT,
        updated_at DOUBLE PRECISION NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS run_lm_journal (
        run_id TEXT NOT NULL,
        request TEXT NOT NULL,
        occurrence BIGINT NOT NULL,
        response TEXT NOT NULL,
        saved_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (run_id, request, occurrence)
    )""",
)


class RunStore(Store):
    """Step checkpoints and LM journals of runs in one SQLite file or a PostgreSQL database
    (``path`` a ``postgresql://`` URL or a shared PostgresDatabase): thread- and
    process-safe, so a run started by one replica can be resumed by another."""

    def __init__(self, path: Any, *, busy_timeout: float = 5.0) -> None:
        super().__init__(
            path,
            store="runs",
            schema=_SCHEMA,
            pg_schema=_PG_SCHEMA,
            schema_version=1,
            busy_timeout=busy_timeout,
        )

    def load(self, run_id: str, step: str) -> dict[str, Any] | None:
        def op(conn: Connection) -> Any:
            return conn.execute(
                "SELECT data FROM run_steps WHERE run_id = ? AND step = ?", (run_id, step)
            ).fetchone()

        row = self._file.read("load step", op)
        if row is None:
            return None
        data: dict[str, Any] = json.loads(row[0])
        return data

    def save(self, run_id: str, step: str, data: dict[str, Any]) -> None:
        text = json.dumps(data)

        def op(conn: Connection) -> None:
            (seq,) = conn.execute(
                "SELECT COUNT(*) FROM run_steps WHERE run_id = ?", (run_id,)
            ).fetchone()
            conn.execute(
                "INSERT INTO run_steps (run_id, step, seq, data, saved_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (run_id, step) DO UPDATE SET "
                "seq = excluded.seq, data = excluded.data, saved_at = excluded.saved_at",
                (run_id, step, seq, text, time.time()),
            )

        self._file.write("save step", op)

    def journal_load(self, run_id: str, request: str, occurrence: int) -> dict[str, Any] | None:
        """The journaled LM result of ``request`` (its ``occurrence``-th time), or None."""

        def op(conn: Connection) -> Any:
            return conn.execute(
                "SELECT response FROM run_lm_journal WHERE run_id = ? AND request = ? "
                "AND occurrence = ?",
                (run_id, request, occurrence),
            ).fetchone()

        row = self._file.read("load LM result", op)
        if row is None:
            return None
        try:
            data = json.loads(row[0])
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    def journal_save(
        self, run_id: str, request: str, occurrence: int, data: dict[str, Any]
    ) -> None:
        text = json.dumps(data, ensure_ascii=False)

        def op(conn: Connection) -> None:
            conn.execute(
                "INSERT INTO run_lm_journal (run_id, request, occurrence, response, "
                "saved_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT (run_id, request, occurrence) "
                "DO UPDATE SET response = excluded.response, saved_at = excluded.saved_at",
                (run_id, request, occurrence, text, time.time()),
            )

        self._file.write("save LM result", op)

    def journal_size(self, run_id: str) -> int:
        """How many LM results of the run are journaled."""

        def op(conn: Connection) -> Any:
            return conn.execute(
                "SELECT COUNT(*) FROM run_lm_journal WHERE run_id = ?", (run_id,)
            ).fetchone()

        return int(self._file.read("count LM results", op)[0])

    def steps(self, run_id: str) -> list[str]:
        """The names of the run's saved steps, in the order they were saved."""

        def op(conn: Connection) -> list[str]:
            rows = conn.execute(
                "SELECT step FROM run_steps WHERE run_id = ? ORDER BY seq", (run_id,)
            ).fetchall()
            return [r[0] for r in rows]

        return self._file.read("list steps", op)

    def set_status(
        self, run_id: str, optimizer: str, seed: int, status: str, result: Any = None
    ) -> None:
        payload = None if result is None else json.dumps(result)

        def op(conn: Connection) -> None:
            conn.execute(
                "INSERT INTO runs (run_id, optimizer, seed, status, result, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (run_id) DO UPDATE SET "
                "optimizer = excluded.optimizer, seed = excluded.seed, status = excluded.status, "
                "result = excluded.result, updated_at = excluded.updated_at",
                (run_id, optimizer, seed, status, payload, time.time()),
            )

        self._file.write("set status", op)

    def status(self, run_id: str) -> str | None:
        def op(conn: Connection) -> Any:
            return conn.execute("SELECT status FROM runs WHERE run_id = ?", (run_id,)).fetchone()

        row = self._file.read("status", op)
        return None if row is None else str(row[0])


class SqliteCheckpointer:
    """The checkpointer (_run_plan.py) of one run in a :class:`RunStore`."""

    def __init__(self, store: RunStore, run_id: str) -> None:
        self.store = store
        self.run_id = run_id

    def load(self, step: str) -> dict[str, Any] | None:
        return self.store.load(self.run_id, step)

    def save(self, step: str, data: dict[str, Any]) -> None:
        self.store.save(self.run_id, step, data)
