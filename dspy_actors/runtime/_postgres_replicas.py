"""Replicas sharing one PostgreSQL database follow each other's upgrades.

Every save to a PostgreSQL parameter store sends a notification on
:data:`~dspy_actors.runtime._parameter_store.SAVED_CHANNEL` in the saving transaction (so it
is delivered once the state is committed, never before). Each app on that database runs one
:class:`SavedStateListener`: a thread with a connection of its own that LISTENs and, for a
program the app serves, upgrades it to the saved version (blue/green, draining the calls in
flight, as a local ``handle.upgrade`` does). A notification lost while the listener was
disconnected is made up for on reconnecting: every served program is compared with the
latest saved version then, and again after each poll until a check succeeds.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable

import psycopg

from dspy_actors import redaction
from dspy_actors._postgres_url import display_url
from dspy_actors.runtime._parameter_store import SAVED_CHANNEL

__all__ = ["SavedStateListener"]

_log = redaction.get_logger("dspy_actors.runtime.replicas")

# How long one wait for notifications lasts: the stop flag is checked this often.
_POLL_SECONDS = 0.25


class SavedStateListener:
    """Calls ``on_saved(program)`` for each state saved to the database by anyone, and
    ``on_saved(None)`` after (re)connecting (anything may have been missed). ``on_saved``
    runs on the listener's own thread; an exception in it is logged, never fatal."""

    def __init__(
        self, url: str, on_saved: Callable[[str | None], None], *, thread_name: str
    ) -> None:
        self.url = url
        self.where = display_url(url)
        self._on_saved = on_saved
        self._stop = threading.Event()
        self.connected = threading.Event()
        self._conn: psycopg.Connection[tuple[object, ...]] | None = None
        self._thread = threading.Thread(target=self._run, name=thread_name, daemon=True)

    def start(self) -> SavedStateListener:
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop listening and join the thread (it wakes within a poll interval)."""
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        pause = 0.1
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {SAVED_CHANNEL}")
                    self.connected.set()
                    pause = 0.1
                    pending = not self._deliver(None)
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=_POLL_SECONDS):
                            pending |= not self._deliver(_program_of(note.payload))
                        if pending:  # a follow failed (the pool still reconnecting): again
                            pending = not self._deliver(None)
            except psycopg.Error as exc:
                self.connected.clear()
                if self._stop.is_set():
                    return
                _log.warning(
                    "store.listener_lost",
                    database=self.where,
                    error=redaction.redact(f"{type(exc).__name__}: {exc}"),
                )
                self._stop.wait(pause)
                pause = min(pause * 2, 2.0)
        self.connected.clear()

    def _deliver(self, program: str | None) -> bool:
        """False if following failed (it is retried: every program is checked again)."""
        try:
            self._on_saved(program)
            return True
        except Exception as exc:  # one bad follow must not stop the listener
            _log.warning(
                "store.follow_failed",
                program=program,
                error=redaction.redact(f"{type(exc).__name__}: {exc}"),
            )
            return False


def _program_of(payload: str) -> str | None:
    try:
        data = json.loads(payload)
        program = data["program"]
    except (ValueError, KeyError, TypeError):
        return None  # unreadable: check every program
    return program if isinstance(program, str) else None
