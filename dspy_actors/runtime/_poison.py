"""Poison inputs: an input that crashes a module again and again is quarantined.

The count survives actor restarts (it lives in the app, keyed by program and input), so a
crash-looping input is stopped after ``threshold`` crashes instead of taking the tree down
with restarts. A quarantined input is refused at once until its dead letter is replayed.

With a shared PostgreSQL store (``dsa.start(store=...)``), crash counts live in the database
(:class:`PoisonCounts`): crashes of one input on every replica add up, so an input that
crashes each replica once is quarantined after ``threshold`` crashes overall. If the
database cannot be reached, the count falls back to this process's own (a crash is never
lost, only counted locally). Quarantine itself is per replica (each refuses at once the
inputs it quarantined; the dead letter is in the shared store for all to see).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from dspy_actors import redaction
from dspy_actors.runtime._sqlite import StoreError
from dspy_actors.runtime._store_backend import Connection, Store

_log = redaction.get_logger("dspy_actors.runtime.store")

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS poison_counts (
        key TEXT PRIMARY KEY,
        crashes INTEGER NOT NULL
    )""",
)
_PG_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS poison_counts (
        key TEXT PRIMARY KEY,
        crashes BIGINT NOT NULL
    )""",
)


class PoisonCounts(Store):
    """Crash counts per input fingerprint, in a store shared by replicas. Thread-safe."""

    def __init__(self, path: Any, *, busy_timeout: float = 5.0) -> None:
        super().__init__(
            path,
            store="poison_counts",
            schema=_SCHEMA,
            pg_schema=_PG_SCHEMA,
            schema_version=1,
            busy_timeout=busy_timeout,
        )

    def crashed(self, key: str) -> int:
        """Count one crash of this input; how many it has caused (on every replica)."""

        def bump(conn: Connection) -> int:
            (count,) = conn.execute(
                "INSERT INTO poison_counts (key, crashes) VALUES (?, 1) ON CONFLICT (key) "
                "DO UPDATE SET crashes = poison_counts.crashes + 1 RETURNING crashes",
                (key,),
            ).fetchone()
            return int(count)

        return self._file.write("count crash", bump)

    def forget(self, key: str) -> None:
        """Drop the count of this input (quarantined or released)."""
        self._file.write(
            "forget crashes",
            lambda conn: conn.execute("DELETE FROM poison_counts WHERE key = ?", (key,)),
        )


def fingerprint(program: str, inputs: Mapping[str, Any]) -> str:
    """A stable id for (program, inputs), for any input: however deep (no recursion), with
    strings Unicode cannot encode (lone surrogates), cycles, or values that are not JSON
    (counted by type and repr, or by type alone when their repr fails)."""
    digest = hashlib.sha256()
    digest.update(program.encode("utf-8", "surrogatepass"))
    digest.update(b"\0")
    for token in _tokens(inputs):
        digest.update(token)
    return digest.hexdigest()


def _text(value: str) -> bytes:
    data = value.encode("utf-8", "surrogatepass")
    return b"s%d:" % len(data) + data


def _tokens(root: Any) -> Iterator[bytes]:
    """The canonical form of ``root`` as a stream of tokens, walked with an explicit stack.
    Mappings count by their items sorted by key (so key order never matters)."""
    stack: list[Any] = [root]
    open_containers: set[int] = set()  # ids on the current path: a cycle counts as one
    while stack:
        item = stack.pop()
        if isinstance(item, _Close):
            open_containers.discard(item.container_id)
            yield item.token
            continue
        if isinstance(item, str):
            yield _text(item)
        elif item is None or isinstance(item, bool | int | float):
            yield f"{type(item).__name__}:{item!r};".encode()
        elif isinstance(item, Mapping | list | tuple):
            if id(item) in open_containers:
                yield b"<cycle>"
                continue
            open_containers.add(id(item))
            if isinstance(item, Mapping):
                pairs = sorted(((_key_bytes(k), v) for k, v in item.items()), key=_first)
                yield b"{"
                stack.append(_Close(id(item), b"}"))
                for key, value in reversed(pairs):
                    stack.append(value)
                    stack.append(_Raw(key))
            else:
                yield b"["
                stack.append(_Close(id(item), b"]"))
                stack.extend(reversed(item))
        elif isinstance(item, _Raw):
            yield item.token
        else:
            yield _other(item)


class _Close:
    __slots__ = ("container_id", "token")

    def __init__(self, container_id: int, token: bytes) -> None:
        self.container_id = container_id
        self.token = token


class _Raw:
    __slots__ = ("token",)

    def __init__(self, token: bytes) -> None:
        self.token = token


def _first(pair: tuple[bytes, Any]) -> bytes:
    return pair[0]


def _key_bytes(key: Any) -> bytes:
    return b"k" + (_text(key) if isinstance(key, str) else _other(key))


def _other(value: Any) -> bytes:
    kind = f"{type(value).__module__}.{type(value).__qualname__}"
    try:
        text = repr(value)
    except Exception:  # a repr that fails (or recurses too deep): the type alone counts
        text = "<unrepresentable>"
    return f"o{kind}:".encode() + _text(text)


class PoisonTracker:
    """Counts crashes per input; says when an input is poison. Thread-safe.

    ``shared()``: the :class:`PoisonCounts` of a shared store to count in (None: count in
    memory), looked up at each crash (the store opens after the tracker is made)."""

    def __init__(
        self, threshold: int, shared: Callable[[], PoisonCounts | None] = lambda: None
    ) -> None:
        if threshold < 1:
            raise ValueError(f"poison threshold must be >= 1, got {threshold!r}")
        self.threshold = threshold
        self._shared = shared
        self._lock = threading.Lock()
        self._crashes: dict[str, int] = {}
        self._quarantined: dict[str, str] = {}  # fingerprint -> dead letter id

    def crashed(self, key: str) -> int:
        """Count one crash caused by this input; returns how many it has caused."""
        with self._lock:
            count = self._crashes.get(key, 0) + 1
            self._crashes[key] = count
        shared = self._shared()
        if shared is not None:
            try:
                # The shared count includes this process's crashes (and forgets them when
                # any replica quarantines or releases the input).
                return shared.crashed(key)
            except StoreError as exc:
                _log.warning("poison.count_local", error=str(exc), action="counted locally")
        return count

    def quarantine(self, key: str, dead_letter_id: str) -> None:
        with self._lock:
            self._quarantined[key] = dead_letter_id
            self._crashes.pop(key, None)
        self._forget_shared(key)

    def _forget_shared(self, key: str) -> None:
        shared = self._shared()
        if shared is not None:
            try:
                shared.forget(key)
            except StoreError as exc:
                _log.warning("poison.forget_failed", error=str(exc), action="kept")

    def any_quarantined(self) -> bool:
        """Whether any input is quarantined (lets callers skip fingerprinting)."""
        return bool(self._quarantined)

    def quarantined(self, key: str) -> str | None:
        """The dead letter id if this input is quarantined."""
        return self._quarantined.get(key)

    def release(self, key: str) -> None:
        with self._lock:
            self._quarantined.pop(key, None)
            self._crashes.pop(key, None)
        self._forget_shared(key)
