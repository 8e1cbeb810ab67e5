"""Request context: trace id, deadline and settings overrides that travel with every call.

A caller's context is captured when a call is made (``capture``), carried inside every
message, and restored (``restored``) wherever the message is handled: in a module actor,
in the thread that runs a composite module's ``forward``, in an LM worker. A call made
while a context is active (a sub-module call inside ``forward``) inherits its trace id and
deadline, so a deadline set at the edge bounds every hop beneath it.
"""

from __future__ import annotations

import contextvars
import itertools
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from dspy_actors import _settings as settings
from dspy_actors.lm._usage import UsageMeter, activate_meters, active_meters, deactivate_meters
from dspy_actors.runtime._errors import DeadlineExceeded

_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class CallContext:
    """What travels with a call. ``deadline`` is a ``time.monotonic()`` instant or None."""

    trace_id: str
    deadline: float | None = None
    overrides: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    # The usage meters active where the call was made (``dspy_actors.lm.metering``, the
    # calling modules'): the LM calls made for it are counted in them wherever they run.
    meters: tuple[UsageMeter, ...] = ()
    # A streamed call's tap (dspy_actors.streaming._tap): where its modules announce
    # themselves and its LM calls send their text as it arrives. None: not streamed.
    streaming: Any = None

    def metered_by(self, meter: UsageMeter) -> CallContext:
        """This context with ``meter`` counting too (a module actor adds its module's);
        itself if ``meter`` already counts (a module calling itself counts once)."""
        if meter in self.meters:
            return self
        return CallContext(
            self.trace_id, self.deadline, self.overrides, (*self.meters, meter), self.streaming
        )

    def streamed_by(self, tap: Any) -> CallContext:
        """This context with ``tap`` as its stream (a predictor's, for one LM call)."""
        return CallContext(self.trace_id, self.deadline, self.overrides, self.meters, tap)

    def remaining(self) -> float | None:
        """Seconds left before the deadline (may be negative), or None without one."""
        return None if self.deadline is None else self.deadline - time.monotonic()

    def check(self, where: str) -> None:
        """Raise :class:`DeadlineExceeded` naming ``where`` if the deadline has passed."""
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise DeadlineExceeded(self.trace_id, where)


# Trace ids: a per-process random prefix and a counter (uuid4 cost more than the rest of a
# cached call's bookkeeping together).
_TRACE_PREFIX = os.urandom(6).hex()
_trace_counter = itertools.count(1)


def new_trace_id() -> str:
    return f"{_TRACE_PREFIX}-{next(_trace_counter):x}"


_current: contextvars.ContextVar[CallContext | None] = contextvars.ContextVar(
    "dspy_actors_call_context", default=None
)


def current() -> CallContext | None:
    """The context of the call being handled in this thread/task, if any."""
    return _current.get()


def capture(
    *, timeout: float | None = None, trace_id: str | None = None, **overrides: Any
) -> CallContext:
    """The context for a new call made from here.

    Inherits the trace id, the (earlier) deadline and the settings overrides of the call
    being handled, if any, then applies ``timeout`` (seconds from now), ``trace_id`` and
    extra ``overrides`` (settings such as ``lm`` or ``temperature``).
    """
    parent = _current.get()
    deadline = None if timeout is None else time.monotonic() + timeout
    if parent is not None and parent.deadline is not None:
        deadline = parent.deadline if deadline is None else min(deadline, parent.deadline)
    active = settings.current_overrides()
    merged = {**active, **overrides} if overrides else active
    return CallContext(
        trace_id or (parent.trace_id if parent is not None else new_trace_id()),
        deadline,
        MappingProxyType(dict(merged)) if merged else _EMPTY,
        active_meters(),
        # A sub-module call streams into its caller's stream.
        parent.streaming.root if parent is not None and parent.streaming is not None else None,
    )


class restored:  # lowercase: it reads as a function, ``with restored(ctx):``
    """Run a block as the call ``ctx`` belongs to: its settings overrides and its context.

    A class rather than a ``@contextmanager`` generator: it runs several times per call on
    the runtime's hot path, and a generator-based manager costs about twice as much."""

    __slots__ = ("_ctx", "_meters_token", "_overrides_token", "_token")

    def __init__(self, ctx: CallContext) -> None:
        self._ctx = ctx

    def __enter__(self) -> CallContext:
        ctx = self._ctx
        self._token = _current.set(ctx)
        # The overrides were checked when the call captured them: push them as they are.
        self._overrides_token = settings.push_overrides(ctx.overrides) if ctx.overrides else None
        # Exactly the call's meters: never those of whatever this thread ran before.
        self._meters_token = activate_meters(ctx.meters)
        return ctx

    def __exit__(self, *_exc: object) -> None:
        deactivate_meters(self._meters_token)
        if self._overrides_token is not None:
            settings.pop_overrides(self._overrides_token)
        _current.reset(self._token)
