"""Per-module LM call history (DSPy's ``module.history``).

A module being called is *recording*: every LM call a predictor makes beneath it is
appended to its ``history`` (and to the predictor's own). Predictors see their LM calls as
steps (:mod:`dspy_actors.lm._steps`), so recording wraps those steps: it works the same when
the actor runtime drives them. History holds what the LM history holds (messages, outputs,
usage), never a client or key.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from dspy_actors.lm._steps import LMCall, Steps

if TYPE_CHECKING:
    from dspy_actors.lm._types import LMResponse

__all__ = [
    "MAX_HISTORY",
    "ModuleHistory",
    "recording",
    "start_recording",
    "stop_recording",
    "with_history",
]

MAX_HISTORY = 10_000
"""Entries a module keeps (the oldest are dropped), as DSPy's ``max_history_size``."""

T = TypeVar("T")

_recording: contextvars.ContextVar[tuple[ModuleHistory, ...]] = contextvars.ContextVar(
    "dspy_actors_recording_histories", default=()
)


class ModuleHistory(list[dict[str, Any]]):
    """A module's LM call entries, oldest first (a list, as in DSPy)."""

    def add(self, entry: dict[str, Any]) -> None:
        self.append(entry)
        if len(self) > MAX_HISTORY:
            del self[: len(self) - MAX_HISTORY]


RecordingToken = contextvars.Token[tuple["ModuleHistory", ...]]


def start_recording(history: ModuleHistory) -> RecordingToken:
    """Append LM calls made from now on to ``history`` too, until ``stop_recording``."""
    return _recording.set((*_recording.get(), history))


def stop_recording(token: RecordingToken) -> None:
    _recording.reset(token)


@contextmanager
def recording(history: ModuleHistory) -> Iterator[None]:
    """Append LM calls made inside the block to ``history`` (besides any already active)."""
    token = start_recording(history)
    try:
        yield
    finally:
        stop_recording(token)


def _entry(call: LMCall, response: LMResponse) -> dict[str, Any]:
    return {
        "model": getattr(call.lm, "model", None),
        "messages": call.messages,
        "kwargs": dict(call.kwargs),
        "outputs": list(response.outputs),
        "usage": response.usage,
        "cache_hit": response.cache_hit,
        "timestamp": time.time(),
    }


def with_history(steps: Steps[T], own: ModuleHistory) -> Steps[T]:
    """``steps`` unchanged, except that each LM call it makes is recorded in ``own`` and
    in every history recording when the call's answer comes back."""
    try:
        call = next(steps)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    while True:
        try:
            response = yield call
        except GeneratorExit:
            steps.close()
            raise
        except BaseException as error:  # the call failed: let the steps handle it
            try:
                call = steps.throw(error)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
            continue
        entry = _entry(call, response)
        own.add(entry)
        for history in _recording.get():
            if history is not own:
                history.add(entry)
        try:
            call = steps.send(response)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
