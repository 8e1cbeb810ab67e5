"""Per-actor lifecycle record: started / exited, the exit reason, and the monitors.

A lifecycle is created with its actor (in ``__init__``, before the actor thread runs), so a
monitor added at any time, even after the actor died, gets exactly one ``Down`` with the
real reason. It is found from the ``ActorRef`` (Pykka keeps only a weak reference to the
actor, so we key on the ref object, which every holder of the actor shares).
"""

from __future__ import annotations

import queue
import threading
import weakref
from collections.abc import Callable
from typing import Any

import pykka
import structlog

from supervisors._exit import Down, ExitReason, MonitorRef

log = structlog.get_logger("supervisors")

DownCallback = Callable[[Down], None]


class Lifecycle:
    """Lifecycle of one supervised actor. Thread-safe."""

    __slots__ = (
        "__weakref__",
        "_lock",
        "_monitors",
        "dropped",
        "exit_requested",
        "finished",
        "inline",
        "reason",
        "ref",
        "settled",
        "started",
    )

    def __init__(self, ref: pykka.ActorRef[Any]) -> None:
        self.ref = ref
        self._lock = threading.Lock()
        self._monitors: dict[MonitorRef, DownCallback] = {}
        self.started = False
        # Set once the actor either finished on_start or exited: what start() waits on.
        self.settled = threading.Event()
        # Set once the actor's thread has finished its loop and reported its exit.
        self.finished = threading.Event()
        self.reason: ExitReason | None = None
        # A shutdown/kill asked for from outside; the actor loop acts on it between messages.
        self.exit_requested: ExitReason | None = None
        # The actor's handler for messages it will never handle (its on_dropped): whoever
        # drains the dead inbox hands them to it.
        self.dropped: Callable[[Any], None] | None = None
        # For an actor that lets senders handle messages while it is idle (see
        # ``tell_inline``): its handler for that, weakly held (the actor owns this record).
        self.inline: weakref.WeakMethod[Callable[[Any], bool]] | None = None

    def mark_started(self) -> None:
        self.started = True
        self.settled.set()

    def add_monitor(self, callback: DownCallback) -> MonitorRef:
        mref = MonitorRef(self.ref.actor_urn)
        with self._lock:
            reason = self.reason
            if reason is None:
                self._monitors[mref] = callback
        if reason is not None:
            _deliver(callback, Down(mref, self.ref, reason))
        return mref

    def remove_monitor(self, mref: MonitorRef) -> bool:
        with self._lock:
            return self._monitors.pop(mref, None) is not None

    def exit(self, reason: ExitReason) -> None:
        """Record the exit once and notify every monitor (in the exiting actor's thread)."""
        with self._lock:
            if self.reason is not None:
                return
            self.reason = reason
            monitors, self._monitors = self._monitors, {}
        self.settled.set()
        self.finished.set()
        for mref, callback in monitors.items():
            _deliver(callback, Down(mref, self.ref, reason))


def _deliver(callback: DownCallback, down: Down) -> None:
    try:
        callback(down)
    except Exception:  # A broken monitor must not break the exiting actor or other monitors.
        log.exception("monitor_callback_failed", actor=str(down.actor))


_lifecycles: weakref.WeakKeyDictionary[pykka.ActorRef[Any], Lifecycle] = weakref.WeakKeyDictionary()
_lifecycles_lock = threading.Lock()


def register_lifecycle(ref: pykka.ActorRef[Any]) -> Lifecycle:
    lifecycle = Lifecycle(ref)
    with _lifecycles_lock:
        _lifecycles[ref] = lifecycle
    return lifecycle


def lifecycle_or_none(ref: pykka.ActorRef[Any]) -> Lifecycle | None:
    """The lifecycle of a supervised actor, or None for a plain Pykka actor."""
    return _lifecycles.get(ref)


def lifecycle_of(ref: pykka.ActorRef[Any]) -> Lifecycle:
    """The lifecycle of a supervised actor; TypeError, clearly, for a plain Pykka actor."""
    lifecycle = _lifecycles.get(ref)
    if lifecycle is None:
        raise TypeError(
            f"{ref} is not a supervised actor: its class {ref.actor_class.__name__} does not "
            "report its exit. Subclass supervisors.SupervisedActor, or wrap the class with "
            "supervisors.supervised(...)"
        )
    return lifecycle


def drain_stranded(
    ref: pykka.ActorRef[Any], on_message: Callable[[Any], None] | None = None
) -> None:
    """Take every message still queued in a stopped actor's inbox: an ask gets
    ``ActorDeadError``, and every message (asks included) goes to ``on_message``, by
    default the actor's own ``on_dropped`` (for a supervised actor; else nowhere).

    Pykka drains the inbox when an actor stops, but a message put between the sender's
    ``is_alive()`` check and that drain would wait forever. So anyone who sees the actor
    stopped after sending may drain it too: the actor's own teardown and any number of
    senders can drain at once, and each message is taken exactly once (never a blocking
    ``get``, which could wait forever for a message another drainer took).
    """
    if on_message is None:
        lifecycle = _lifecycles.get(ref)
        on_message = lifecycle.dropped if lifecycle is not None else None
    inbox = ref.actor_inbox
    while True:
        try:
            envelope = inbox.get_nowait()  # type: ignore[attr-defined]
        except queue.Empty:
            return
        reply_to = envelope.reply_to
        if reply_to is not None:
            error = pykka.ActorDeadError(f"{ref} stopped before handling the message")
            try:
                reply_to.set_exception(exc_info=(pykka.ActorDeadError, error, None))
            except Exception:  # queue.Full: already answered
                pass
        if on_message is not None:
            try:
                on_message(envelope.message)
            except Exception:  # one bad handler must not strand the rest
                log.exception("stranded_message_handler_failed", actor=str(ref))
