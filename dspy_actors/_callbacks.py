"""Callbacks, as DSPy's ``BaseCallback``: hooks told when a module or an LM call starts
and ends. ``configure(callbacks=[MyCallback()])`` (or ``context(callbacks=...)``).

A module call is reported with its instance and inputs ``{"args": (...), "kwargs":
{...}}`` (DSPy's shape), when it runs in-process and when it is served (a served
predictor is reported by the actor that runs it). An LM call is reported with the LM and
``{"prompt": None, "messages": [...], "kwargs": {...}}``; its outputs are the completions'
texts. A callback that raises is logged and otherwise ignored: it never breaks a call.
"""

from __future__ import annotations

import contextvars
import logging
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from dspy_actors import _settings as settings

__all__ = ["BaseCallback", "active_callbacks", "reporting_lm_call", "reporting_module_call"]

_log = logging.getLogger(__name__)

# The module call being reported in this context: a predictor's steps, run by its own
# ``__call__``, are then not reported a second time.
_reporting: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "dspy_actors_reporting_module", default=None
)


class BaseCallback:
    """Subclass and override the hooks you need; each does nothing by default."""

    def on_module_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        """A module call starts: ``inputs`` is ``{"args": (...), "kwargs": {...}}``."""

    def on_module_end(
        self, call_id: str, outputs: Any | None, exception: BaseException | None = None
    ) -> None:
        """The module call ``call_id`` ended with ``outputs``, or raised ``exception``."""

    def on_lm_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        """An LM call starts: ``inputs`` is ``{"prompt", "messages", "kwargs"}``."""

    def on_lm_end(
        self, call_id: str, outputs: Any | None, exception: BaseException | None = None
    ) -> None:
        """The LM call ``call_id`` ended with ``outputs`` (texts), or raised ``exception``."""


def active_callbacks(instance: Any = None) -> list[BaseCallback]:
    """The callbacks in force: the settings', then the instance's own ``callbacks``."""
    configured = settings.get("callbacks") or []
    own = getattr(instance, "callbacks", None) or []
    return [*configured, *own] if own else list(configured)


def _each(callbacks: Sequence[BaseCallback], hook: str, **kwargs: Any) -> None:
    for callback in callbacks:
        try:
            getattr(callback, hook)(**kwargs)
        except Exception as error:  # a callback must never break the call it watches
            _log.warning(
                "callback %r failed in %s: %s: %s", callback, hook, type(error).__name__, error
            )


class _Report:
    """What the block reports as the call's outputs (set by the caller before exit)."""

    __slots__ = ("outputs",)

    def __init__(self) -> None:
        self.outputs: Any = None


@contextmanager
def _reporting_call(
    kind: str, instance: Any, inputs: dict[str, Any], callbacks: list[BaseCallback]
) -> Iterator[_Report]:
    call_id = uuid.uuid4().hex
    _each(callbacks, f"on_{kind}_start", call_id=call_id, instance=instance, inputs=inputs)
    report = _Report()
    try:
        yield report
    except BaseException as error:
        _each(callbacks, f"on_{kind}_end", call_id=call_id, outputs=None, exception=error)
        raise
    _each(callbacks, f"on_{kind}_end", call_id=call_id, outputs=report.outputs, exception=None)


@contextmanager
def reporting_module_call(
    instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any], *, in_steps: bool = False
) -> Iterator[_Report]:
    """Report a module call to the callbacks in force (if any and not reported already).

    ``in_steps``: the block is inside a predictor's steps, which may resume in another
    thread's context (served), so nothing is set in this context (no module is nested in
    a predictor's steps anyway)."""
    callbacks = active_callbacks(instance)
    if not callbacks or _reporting.get() == id(instance):
        yield _Report()
        return
    if in_steps:
        with _reporting_call(
            "module", instance, {"args": args, "kwargs": kwargs}, callbacks
        ) as report:
            yield report
        return
    token = _reporting.set(id(instance))
    try:
        with _reporting_call(
            "module", instance, {"args": args, "kwargs": kwargs}, callbacks
        ) as report:
            yield report
    finally:
        _reporting.reset(token)


def reporting_lm_call(lm: Any, messages: list[dict[str, Any]], kwargs: dict[str, Any]) -> Any:
    """A context manager reporting one LM call, or None when no callback is in force (the
    common case costs one lookup)."""
    callbacks = active_callbacks(lm)
    if not callbacks:
        return None
    return _reporting_call(
        "lm", lm, {"prompt": None, "messages": messages, "kwargs": kwargs}, callbacks
    )
