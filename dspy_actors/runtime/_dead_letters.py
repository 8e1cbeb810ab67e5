"""The dead-letter store: poison messages, kept for inspection and replay, in SQLite.

An input that crashed a module again and again is written here (inputs, exception type and
message, traceback, module path, attempts) instead of crash-looping the tree. The app lists
them, replays one (and then marks it replayed) or removes it.

Inputs are stored as JSON. A value with no JSON form is stored as
``{"__repr__": repr(value), "__type__": "module.Class"}`` (see :data:`REPR_MARKER`), so the
letter is always written; values under secret-looking keys (``api_key``, ...) are stored as
``"<redacted>"``, and any API key in a text (an input, the message, the traceback) is masked
(see ``dspy_actors.redaction``): a poison message must be recorded, never a credential.

Each store lives in its own file by default (see the runtime docs): a burst of dead letters
never contends with parameter saves, and a broken dead-letter file never costs the optimized
parameters. Sharing one file with a ParameterStore works too (their tables are distinct).
Robustness as in ``_sqlite``: no raw ``sqlite3`` error reaches a caller.

Over 400 lines: one store: its schema, the JSON encoding of any input (stand-ins for what
JSON cannot hold) and the operator action log kept beside the letters share its row helpers.
"""

from __future__ import annotations

import builtins
import json
import math
import os
import time
import traceback as traceback_module
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from dspy_actors import redaction
from dspy_actors.runtime._parameter_store import looks_like_secret
from dspy_actors.runtime._sqlite import StoreError
from dspy_actors.runtime._store_backend import Connection, Store

if TYPE_CHECKING:
    from dspy_actors.runtime._postgres import PostgresDatabase

__all__ = [
    "REDACTED",
    "REPR_MARKER",
    "DeadLetter",
    "DeadLetterAction",
    "DeadLetterStore",
    "StoreError",
    "jsonify",
]

_log = redaction.get_logger("dspy_actors.runtime.store")

SCHEMA_VERSION = 1
_STORE = "dead_letters"

REPR_MARKER = "__repr__"
"""Key of the object that stands for a value with no JSON form (with ``__type__``)."""
REDACTED = "<redacted>"

# Messages and tracebacks are capped (a pathological exception message must not bloat the
# file); inputs never are: they are what a replay needs.
MAX_MESSAGE_CHARS = 8_192
MAX_TRACEBACK_CHARS = 65_536

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS dead_letters (
        id TEXT PRIMARY KEY,
        program TEXT NOT NULL,
        module_path TEXT NOT NULL,
        inputs TEXT NOT NULL,
        exception_type TEXT NOT NULL,
        message TEXT NOT NULL,
        traceback TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        created_at REAL NOT NULL,
        replayed_at REAL
    )""",
    "CREATE INDEX IF NOT EXISTS dead_letters_by_program ON dead_letters (program, created_at)",
    "CREATE INDEX IF NOT EXISTS dead_letters_by_time ON dead_letters (created_at)",
    # The operators' actions on letters (the console's action log): who, when, outcome.
    # Added without a version bump: CREATE ... IF NOT EXISTS gives older files the table.
    """CREATE TABLE IF NOT EXISTS dead_letter_actions (
        at REAL NOT NULL,
        who TEXT NOT NULL,
        via TEXT NOT NULL,
        client TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        ok INTEGER NOT NULL,
        outcome TEXT NOT NULL
    )""",
)
# PostgreSQL has no rowid: ``seq`` keeps the order letters were added in.
_PG_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS dead_letters (
        id TEXT PRIMARY KEY,
        seq BIGSERIAL,
        program TEXT NOT NULL,
        module_path TEXT NOT NULL,
        inputs TEXT NOT NULL,
        exception_type TEXT NOT NULL,
        message TEXT NOT NULL,
        traceback TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        replayed_at DOUBLE PRECISION
    )""",
    "CREATE INDEX IF NOT EXISTS dead_letters_by_program ON dead_letters (program, created_at)",
    "CREATE INDEX IF NOT EXISTS dead_letters_by_time ON dead_letters (created_at)",
    """CREATE TABLE IF NOT EXISTS dead_letter_actions (
        seq BIGSERIAL PRIMARY KEY,
        at DOUBLE PRECISION NOT NULL,
        who TEXT NOT NULL,
        via TEXT NOT NULL,
        client TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        ok BOOLEAN NOT NULL,
        outcome TEXT NOT NULL
    )""",
)

_COLUMNS = (
    "id, program, module_path, inputs, exception_type, message, traceback, attempts, "
    "created_at, replayed_at"
)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One quarantined input. Times are epoch seconds; ``replayed_at`` is None until replayed.

    ``inputs`` is JSON data: values that had no JSON form appear as ``{"__repr__": ...,
    "__type__": ...}`` objects and cannot be replayed as they were.
    """

    id: str
    program: str
    module_path: str
    inputs: dict[str, Any]
    exception_type: str
    message: str
    traceback: str
    attempts: int
    created_at: float
    replayed_at: float | None = None

    @property
    def replayable(self) -> bool:
        """True if every input value was stored as itself (no repr stand-in, no redaction)."""
        return not _has_stand_in(self.inputs)


@dataclass(frozen=True, slots=True)
class DeadLetterAction:
    """An operator's action on a dead letter (replay, discard, ...), as the action log keeps
    it: when (epoch seconds), who and how they proved it (``via``: "cookie" or "bearer",
    from ``client``), what on which ``target``, whether it worked and what came of it."""

    at: float
    who: str
    via: str
    client: str
    action: str
    target: str
    ok: bool
    outcome: str


_ACTION_COLUMNS = "at, who, via, client, action, target, ok, outcome"
# Kept per store at most (the oldest go first): an action log must not fill the disk.
MAX_ACTIONS = 10_000
MAX_FIELD_CHARS = 2_048


def _type_name(cls: type[Any]) -> str:
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def _stand_in(value: Any) -> dict[str, str]:
    try:
        text = repr(value)
    except Exception as exc:  # a broken __repr__ must not lose the letter
        text = f"<unrepresentable {type(value).__name__}: {type(exc).__name__}>"
    return {REPR_MARKER: _encodable(redaction.redact(text)), "__type__": _type_name(type(value))}


def _encodable(text: str) -> str:
    """``text`` with anything UTF-8 cannot encode (lone surrogates) escaped, so SQLite takes it."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


# Deeper inputs are stored as a stand-in below this depth: a letter must always be written
# (and read back), however deep the poison that it records.
MAX_DEPTH = 100


def jsonify(value: Any, _depth: int = 0) -> Any:
    """``value`` as JSON data; values with no JSON form become repr stand-ins (so do strings
    UTF-8 cannot encode, such as lone surrogates, and anything nested past MAX_DEPTH)."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return _stand_in(value)  # repr escapes the surrogates
        clean = redaction.redact(value)
        if clean != value:  # a credential pasted into an input: stored masked, not replayable
            return {REPR_MARKER: clean, "__type__": "str"}
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else _stand_in(value)
    if isinstance(value, Mapping | list | tuple | BaseModel) and _depth >= MAX_DEPTH:
        return {
            REPR_MARKER: f"<nested deeper than {MAX_DEPTH} levels>",
            "__type__": _type_name(type(value)),
        }
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            name = key if isinstance(key, str) else str(key)
            name = _encodable(name)
            out[name] = REDACTED if looks_like_secret(name) else jsonify(item, _depth + 1)
        return out
    if isinstance(value, list | tuple):
        return [jsonify(item, _depth + 1) for item in value]
    if isinstance(value, BaseModel):
        # A structured input type: its JSON form is what a signature validates back.
        try:
            return jsonify(value.model_dump(mode="json"), _depth + 1)
        except Exception:
            return _stand_in(value)
    return _stand_in(value)


def _has_stand_in(value: Any) -> bool:
    if isinstance(value, dict):
        if REPR_MARKER in value and "__type__" in value:
            return True
        return any(v == REDACTED or _has_stand_in(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_stand_in(v) for v in value)
    return False


def _clip(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    # Keep both ends: a traceback's most telling frames are its last.
    half = limit // 2
    return f"{text[:half]}\n... [{len(text) - limit} characters cut] ...\n{text[-half:]}"


class DeadLetterStore(Store):
    """Dead letters in one SQLite file or a PostgreSQL database (``path`` a ``postgresql://``
    URL or a shared PostgresDatabase). Thread-safe; several processes may share it.

    ``max_letters``: past this many, the oldest letters are dropped (replayed ones first), so
    a poison input arriving forever cannot fill the disk. None: no limit.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | PostgresDatabase,
        *,
        max_letters: int | None = 10_000,
        busy_timeout: float = 5.0,
    ) -> None:
        if max_letters is not None and max_letters < 1:
            raise ValueError(f"max_letters must be >= 1 or None, got {max_letters!r}")
        self.max_letters = max_letters
        super().__init__(
            path,
            store=_STORE,
            schema=_SCHEMA,
            pg_schema=_PG_SCHEMA,
            schema_version=SCHEMA_VERSION,
            busy_timeout=busy_timeout,
        )

    def add(
        self,
        *,
        program: str,
        module_path: str,
        inputs: Mapping[str, Any],
        exception: BaseException | None = None,
        exception_type: str | None = None,
        message: str | None = None,
        traceback: str | None = None,
        attempts: int = 1,
    ) -> DeadLetter:
        """Record a poison input. Give the ``exception`` (its type, message and traceback are
        taken from it) or the three strings; explicit strings win over the exception's."""
        if exception is not None:
            if exception_type is None:
                exception_type = _type_name(type(exception))
            if message is None:
                message = str(exception)
            if traceback is None:
                traceback = "".join(traceback_module.format_exception(exception))
        letter = DeadLetter(
            id=uuid.uuid4().hex,
            program=program,
            module_path=module_path,
            inputs=jsonify(dict(inputs)),
            exception_type=exception_type or "unknown",
            message=_encodable(_clip(redaction.redact(message or ""), MAX_MESSAGE_CHARS)),
            traceback=_encodable(_clip(redaction.redact(traceback or ""), MAX_TRACEBACK_CHARS)),
            attempts=int(attempts),
            created_at=time.time(),
        )
        row = (
            letter.id,
            letter.program,
            letter.module_path,
            json.dumps(letter.inputs, ensure_ascii=False, allow_nan=False),
            letter.exception_type,
            letter.message,
            letter.traceback,
            letter.attempts,
            letter.created_at,
        )
        limit = self.max_letters
        order = "seq" if self._file.is_postgres else "rowid"

        def insert(conn: Connection) -> int:
            conn.execute(
                f"INSERT INTO dead_letters ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL)",
                row,
            )
            if limit is None:
                return 0
            (total,) = conn.execute("SELECT count(*) FROM dead_letters").fetchone()
            excess = int(total) - limit
            if excess <= 0:
                return 0
            # Replayed letters go first, then the oldest; the new letter is never dropped.
            cursor = conn.execute(
                "DELETE FROM dead_letters WHERE id IN (SELECT id FROM dead_letters "
                f"WHERE id != ? ORDER BY replayed_at IS NULL, created_at, {order} LIMIT ?)",
                (letter.id, excess),
            )
            return int(cursor.rowcount)

        dropped = self._file.write("add", insert)
        if dropped:
            _log.warning("dead_letters.pruned", path=str(self.path), dropped=dropped, limit=limit)
        return letter

    def list(
        self, program: str | None = None, include_replayed: bool = False
    ) -> builtins.list[DeadLetter]:
        """Dead letters, oldest first (of one program if given; unreplayed only by default)."""
        where, args = _filter(program, include_replayed)
        order = "seq" if self._file.is_postgres else "rowid"
        rows = self._file.read(
            "list",
            lambda conn: conn.execute(
                f"SELECT {_COLUMNS} FROM dead_letters{where} ORDER BY created_at, {order}", args
            ).fetchall(),
        )
        letters = [self._letter(row) for row in rows]
        return [letter for letter in letters if letter is not None]

    def get(self, id: str) -> DeadLetter | None:
        """The dead letter with this id, or None."""
        row = self._file.read(
            "get",
            lambda conn: conn.execute(
                f"SELECT {_COLUMNS} FROM dead_letters WHERE id = ?", (id,)
            ).fetchone(),
        )
        return None if row is None else self._letter(row)

    def mark_replayed(self, id: str) -> DeadLetter | None:
        """Record that this letter was replayed (now); the updated letter, or None if unknown."""
        now = time.time()

        def update(conn: Connection) -> Any:
            conn.execute("UPDATE dead_letters SET replayed_at = ? WHERE id = ?", (now, id))
            return conn.execute(
                f"SELECT {_COLUMNS} FROM dead_letters WHERE id = ?", (id,)
            ).fetchone()

        row = self._file.write("mark_replayed", update)
        return None if row is None else self._letter(row)

    def remove(self, id: str) -> bool:
        """Delete one letter; False if there was none with this id."""

        def delete(conn: Connection) -> bool:
            return conn.execute("DELETE FROM dead_letters WHERE id = ?", (id,)).rowcount > 0

        return self._file.write("remove", delete)

    def count(self, program: str | None = None, include_replayed: bool = False) -> int:
        """How many letters :meth:`list` would return."""
        where, args = _filter(program, include_replayed)
        row = self._file.read(
            "count",
            lambda conn: conn.execute(f"SELECT count(*) FROM dead_letters{where}", args).fetchone(),
        )
        return int(row[0])

    def record_action(
        self,
        *,
        action: str,
        target: str,
        ok: bool,
        outcome: str,
        who: str = "operator",
        via: str = "",
        client: str = "",
        at: float | None = None,
    ) -> DeadLetterAction:
        """Keep an operator's action in the action log (texts redacted and capped); the
        oldest entries past ``MAX_ACTIONS`` are dropped."""

        def clean(text: str) -> str:
            return _encodable(_clip(redaction.redact(str(text)), MAX_FIELD_CHARS))

        entry = DeadLetterAction(
            at=time.time() if at is None else float(at),
            who=clean(who),
            via=clean(via),
            client=clean(client),
            action=clean(action),
            target=clean(target),
            ok=bool(ok),
            outcome=clean(outcome),
        )
        row = (entry.at, entry.who, entry.via, entry.client, entry.action, entry.target)
        order = "seq" if self._file.is_postgres else "rowid"

        def insert(conn: Connection) -> None:
            conn.execute(
                f"INSERT INTO dead_letter_actions ({_ACTION_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (*row, entry.ok, entry.outcome),
            )
            conn.execute(
                f"DELETE FROM dead_letter_actions WHERE {order} NOT IN (SELECT {order} FROM "
                f"dead_letter_actions ORDER BY {order} DESC LIMIT ?)",
                (MAX_ACTIONS,),
            )

        self._file.write("record_action", insert)
        return entry

    def actions(self, limit: int = 100) -> builtins.list[DeadLetterAction]:
        """The action log's last ``limit`` entries, oldest first."""
        order = "seq" if self._file.is_postgres else "rowid"
        rows = self._file.read(
            "actions",
            lambda conn: conn.execute(
                f"SELECT {_ACTION_COLUMNS} FROM dead_letter_actions ORDER BY {order} DESC LIMIT ?",
                (int(limit),),
            ).fetchall(),
        )
        return [
            DeadLetterAction(
                at=float(r[0]),
                who=str(r[1]),
                via=str(r[2]),
                client=str(r[3]),
                action=str(r[4]),
                target=str(r[5]),
                ok=bool(r[6]),
                outcome=str(r[7]),
            )
            for r in reversed(rows)
        ]

    def _letter(self, row: tuple[Any, ...]) -> DeadLetter | None:
        try:
            inputs = json.loads(row[3])
        except (TypeError, ValueError):
            inputs = None
        if not isinstance(inputs, dict):
            self._file.note_error(f"dead letter {row[0]} has damaged inputs")
            _log.warning(
                "store.bad_row", store=_STORE, path=str(self.path), id=row[0], action="ignored"
            )
            return None
        return DeadLetter(
            id=str(row[0]),
            program=str(row[1]),
            module_path=str(row[2]),
            inputs=inputs,
            exception_type=str(row[4]),
            message=str(row[5]),
            traceback=str(row[6]),
            attempts=int(row[7]),
            created_at=float(row[8]),
            replayed_at=None if row[9] is None else float(row[9]),
        )


def _filter(program: str | None, include_replayed: bool) -> tuple[str, tuple[Any, ...]]:
    clauses: builtins.list[str] = []
    args: builtins.list[Any] = []
    if program is not None:
        clauses.append("program = ?")
        args.append(program)
    if not include_replayed:
        clauses.append("replayed_at IS NULL")
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), tuple(args)
