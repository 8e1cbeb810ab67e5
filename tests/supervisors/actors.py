"""Actors and helpers the supervisor tests share."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import supervisors as sup
from dspy_actors.testing._polling import wait_until


class Journal:
    """A thread-safe log of (event, child id) pairs, to check start/stop order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.entries: list[tuple[str, str]] = []

    def add(self, event: str, who: str) -> None:
        with self._lock:
            self.entries.append((event, who))

    def of(self, event: str) -> list[str]:
        with self._lock:
            return [who for e, who in self.entries if e == event]

    def clear(self) -> None:
        with self._lock:
            self.entries.clear()


class Worker(sup.SupervisedActor):
    """Echoes; "crash" raises; "stop" stops normally; ("sleep", s) sleeps; ("block", ...)."""

    def __init__(
        self,
        who: str = "worker",
        journal: Journal | None = None,
        stop_delay: float = 0.0,
        fail_start: Callable[[], bool] | None = None,
    ) -> None:
        super().__init__()
        self.who = who
        self.journal = journal
        self.stop_delay = stop_delay
        self.fail_start = fail_start

    def on_start(self) -> None:
        if self.fail_start is not None and self.fail_start():
            raise RuntimeError(f"{self.who} refuses to start")
        if self.journal is not None:
            self.journal.add("start", self.who)

    def on_stop(self) -> None:
        if self.stop_delay:
            time.sleep(self.stop_delay)
        if self.journal is not None:
            self.journal.add("stop", self.who)

    def on_failure(self, *exc_info: object) -> None:
        if self.journal is not None:
            self.journal.add("failure", self.who)

    def on_receive(self, message: Any) -> Any:
        if message == "crash":
            raise ValueError(f"{self.who} crashed on purpose")
        if message == "stop":
            self.stop()
            return None
        if isinstance(message, tuple) and message[0] == "block":
            # ("block", entered, release): signal we are busy, then wait to be released.
            message[1].set()
            message[2].wait(10.0)
            return "released"
        if isinstance(message, tuple) and message[0] == "sleep":
            time.sleep(message[1])
            return "slept"
        return (self.who, message)


def spec(
    child_id: str,
    journal: Journal | None = None,
    **options: Any,
) -> sup.ChildSpec:
    """A Worker child spec whose worker calls itself ``child_id``."""
    kwargs = {"who": child_id, "journal": journal}
    for key in ("stop_delay", "fail_start"):
        if key in options:
            kwargs[key] = options.pop(key)
    return sup.ChildSpec(child_id, Worker, kwargs=kwargs, **options)


def crash(ref: Any) -> sup.ExitReason | None:
    """Crash a worker and wait for it to have exited."""
    ref.tell("crash")
    return sup.wait_for_exit(ref, timeout=5.0)


def new_ref(handle: sup.Supervisor, child_id: str, old: Any) -> Any:
    """Wait until ``child_id`` runs as an actor other than ``old``; return its ref."""
    found: list[Any] = []

    def replaced() -> bool:
        ref = handle.child(child_id)
        if ref is not None and ref is not old and ref.is_alive():
            found.append(ref)
            return True
        return False

    wait_until(replaced, what=f"{child_id} to be restarted")
    return found[-1]


class EventLog:
    """Collects supervision events while subscribed (use as a context manager)."""

    def __init__(self) -> None:
        self.events: list[sup.SupervisorEvent] = []
        self._lock = threading.Lock()
        self._unsubscribe: Callable[[], None] | None = None

    def __enter__(self) -> EventLog:
        self._unsubscribe = sup.subscribe(self._add)
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()

    def _add(self, event: sup.SupervisorEvent) -> None:
        with self._lock:
            self.events.append(event)

    def kinds(self, supervisor: str | None = None) -> list[str]:
        with self._lock:
            return [e.kind for e in self.events if supervisor in (None, e.supervisor)]

    def of(self, kind: str) -> list[sup.SupervisorEvent]:
        with self._lock:
            return [e for e in self.events if e.kind == kind]
