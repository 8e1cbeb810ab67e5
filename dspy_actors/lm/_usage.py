"""Token usage: one call's ``Usage``, and thread-safe meters that add it up.

An LM records every call's usage into its own meter and into every meter *active* in the
calling context (``with metering(meter):``). Modules activate their meter around
``forward``, so nested modules each see the usage of the calls made beneath them, exactly,
under any number of threads. The actor runtime carries the active meters inside each
call's context, so ``with metering(meter): handle.call(...)`` counts the LM calls that one
call made, in whichever threads or processes they ran.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens (and cost in USD, where known) of one or more LM calls."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    calls: int = 1
    cost: float | None = None

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        cost = (
            None
            if self.cost is None and other.cost is None
            else (self.cost or 0.0) + (other.cost or 0.0)
        )
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.calls + other.calls,
            cost,
        )


ZERO_USAGE = Usage(0, 0, 0, None)


class UsageMeter:
    """A thread-safe running total of ``Usage``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._total = ZERO_USAGE

    def add(self, usage: Usage) -> None:
        with self._lock:
            self._total = self._total + usage

    def add_for(self, model: str | None, usage: Usage) -> None:
        """``add``, told which model the usage is for (a per-model meter keeps it apart)."""
        self.add(usage)

    @property
    def total(self) -> Usage:
        with self._lock:
            return self._total

    def reset(self) -> Usage:
        """Zero the meter and return what it held."""
        with self._lock:
            total, self._total = self._total, ZERO_USAGE
            return total


_active_meters: contextvars.ContextVar[tuple[UsageMeter, ...]] = contextvars.ContextVar(
    "dspy_actors_active_usage_meters", default=()
)


@contextmanager
def metering(meter: UsageMeter) -> Iterator[UsageMeter]:
    """Make ``meter`` receive the usage of every LM call made inside the block."""
    token = _active_meters.set((*_active_meters.get(), meter))
    try:
        yield meter
    finally:
        _active_meters.reset(token)


def active_meters() -> tuple[UsageMeter, ...]:
    """The meters active in the current context (the runtime carries them with a call)."""
    return _active_meters.get()


def activate_meters(
    meters: tuple[UsageMeter, ...],
) -> contextvars.Token[tuple[UsageMeter, ...]]:
    """Make exactly ``meters`` the active ones (a call's, where it is handled); undo with
    ``deactivate_meters``."""
    return _active_meters.set(meters)


def deactivate_meters(token: contextvars.Token[tuple[UsageMeter, ...]]) -> None:
    _active_meters.reset(token)


def record_usage(usage: Usage, model: str | None = None) -> None:
    """Add ``usage`` (of ``model``) to every meter active in the current context (LMs call
    this)."""
    for meter in _active_meters.get():
        meter.add_for(model, usage)
