"""Who hears about an LM call's HTTP retries, besides the LM's own counter.

The runtime runs each LM request in a task (an event loop) or a thread of its own and sets
``retry_listener`` there to a function of that request (which publishes an ``lm.retry``
event carrying the call's trace id). A context variable, so concurrent requests on one loop
never hear each other's retries, and code outside the runtime hears nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar

from dspy_actors.lm.errors import LMError

__all__ = ["note_retry", "retry_listener"]

retry_listener: ContextVar[Callable[[LMError, float], None] | None] = ContextVar(
    "dspy_actors_lm_retry_listener", default=None
)


def note_retry(error: LMError, delay: float) -> None:
    """Tell the current request's listener (if any) that ``error`` is retried after
    ``delay`` seconds. Never raises: telemetry must not change the call's outcome."""
    listener = retry_listener.get()
    if listener is None:
        return
    try:
        listener(error, delay)
    except Exception:
        pass
