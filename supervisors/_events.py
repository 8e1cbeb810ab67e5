"""Supervision events: every start, exit, restart, escalation and abandonment.

Each event is logged with structlog (logger ``supervisors``) and delivered to subscribers.
Subscribers run in the supervisor's thread: keep them short and never block in them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import structlog

EventKind = Literal[
    "supervisor_started",
    "supervisor_stopped",
    "child_started",
    "child_exited",
    "child_restarted",
    "restart_failed",
    "child_terminated",
    "child_abandoned",
    "escalated",
]

log = structlog.get_logger("supervisors")

_LEVELS: dict[str, str] = {
    "child_exited": "warning",
    "restart_failed": "error",
    "child_abandoned": "error",
    "escalated": "error",
}
_RANK = {"debug": 10, "info": 20, "warning": 30, "error": 40}
_log_threshold = _RANK["warning"]


def set_log_level(level: str) -> None:
    """Log supervision events at ``level`` and above (default ``"warning"``: exits, failed
    restarts, abandonments and escalations; ``"info"`` adds every start, stop and restart).
    Subscribers get every event whatever the level."""
    global _log_threshold
    if level not in _RANK:
        raise ValueError(f"level must be one of {sorted(_RANK)}, got {level!r}")
    _log_threshold = _RANK[level]


@dataclass(frozen=True, slots=True)
class SupervisorEvent:
    """One supervision event. ``supervisor`` is the path of the supervisor it happened in."""

    kind: EventKind
    supervisor: str
    child_id: str | None = None
    reason: str | None = None
    restart_count: int = 0
    timestamp: float = 0.0


Subscriber = Callable[[SupervisorEvent], None]

_subscribers: tuple[Subscriber, ...] = ()
_subscribers_lock = threading.Lock()


def subscribe(subscriber: Subscriber) -> Callable[[], None]:
    """Deliver every supervision event to ``subscriber``; returns a function that unsubscribes."""
    global _subscribers
    with _subscribers_lock:
        _subscribers = (*_subscribers, subscriber)

    def unsubscribe() -> None:
        global _subscribers
        with _subscribers_lock:
            _subscribers = tuple(s for s in _subscribers if s is not subscriber)

    return unsubscribe


_reason_filter: Callable[[str], str] | None = None


def set_reason_filter(reason_filter: Callable[[str], str] | None) -> None:
    """Pass every exit reason through ``reason_filter`` before it is logged or delivered
    to subscribers (an application masks credentials an exception message may quote).
    None: reasons as they are (the default)."""
    global _reason_filter
    _reason_filter = reason_filter


def _reason_text(reason: object) -> str:
    text = str(reason)
    reason_filter = _reason_filter
    if reason_filter is None:
        return text
    try:
        return reason_filter(text)
    except Exception:  # a broken filter must not break supervision; show nothing then
        return f"<reason hidden: the reason filter failed> {type(reason).__name__}"


def emit(
    kind: EventKind,
    supervisor: str,
    child_id: str | None = None,
    reason: object = None,
    restart_count: int = 0,
) -> None:
    event = SupervisorEvent(
        kind,
        supervisor,
        child_id,
        None if reason is None else _reason_text(reason),
        restart_count,
        time.time(),
    )
    level = _LEVELS.get(kind, "info")
    if _RANK[level] >= _log_threshold:
        getattr(log, level)(
            kind,
            supervisor=supervisor,
            child=child_id,
            reason=event.reason,
            restart_count=restart_count,
        )
    for subscriber in _subscribers:
        try:
            subscriber(event)
        except Exception:  # A failing subscriber must not break supervision.
            log.exception("event_subscriber_failed", subscriber=repr(subscriber))
