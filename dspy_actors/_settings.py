"""Process-wide defaults and per-thread/per-task overrides.

``configure(...)`` sets defaults for the whole process; ``with context(...)`` overlays
overrides for the current thread or asyncio task only (a ``contextvars`` layer), so two
threads can run with different LMs or temperatures at the same time.

Recognised keys: ``lm``, ``adapter``, ``cache`` (bool, per-call cache switch),
``callbacks`` (a list of :class:`dspy_actors._callbacks.BaseCallback`), ``tool_runner``
(what runs an agent's tool calls) and the LM
sampling parameters in :data:`SAMPLING_KEYS`, which an LM applies over its own defaults
(per-call keyword arguments still win over both).
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from types import MappingProxyType
from typing import Any

SAMPLING_KEYS: frozenset[str] = frozenset(
    {
        "temperature",
        "max_tokens",
        "top_p",
        "top_k",
        "stop",
        "seed",
        "n",
        "presence_penalty",
        "frequency_penalty",
        "rollout_id",  # DSPy's: part of the cache key only, never sent (see LM._body)
    }
)
SETTING_KEYS: frozenset[str] = (
    frozenset({"lm", "adapter", "cache", "callbacks", "warn_on_type_mismatch"}) | SAMPLING_KEYS
)
# The runner an agent's tool calls go through (a serving app sets its own).
SETTING_KEYS |= frozenset({"tool_runner"})

_EMPTY: Mapping[str, Any] = MappingProxyType({})
_defaults: Mapping[str, Any] = _EMPTY
_defaults_lock = threading.Lock()
_overrides: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "dspy_actors_settings_overrides", default=_EMPTY
)


# DSPy settings we deliberately do not have, and what to use instead.
DSPY_SETTINGS_INSTEAD: Mapping[str, str] = MappingProxyType(
    {
        "track_usage": "wrap the code in `with dspy_actors.track_usage() as usage:`",
        "usage_tracker": "wrap the code in `with dspy_actors.track_usage() as usage:`",
        "num_threads": "pass num_threads= to Evaluate, Parallel or Module.batch",
        "max_errors": "pass max_errors= to Parallel or Module.batch",
        "trace": "no trace is kept; watch calls with callbacks=[...] or inspect_history()",
        "async_max_workers": "asyncify() uses asyncio's executor; a served program's "
        "handle.acall needs no thread at all",
        "disable_history": "each LM keeps a bounded history (LM.max_history)",
    }
)


# Checks an ``lm=`` value once the LM layer is imported (it sets this: a layer above this
# module's, it knows what an LM must not be; see lm/_misplaced_forward.py).
_lm_check: Callable[[object, str], None] | None = None


def set_lm_check(check: Callable[[object, str], None]) -> None:
    """Set what ``configure``/``context`` call with an ``lm=`` value and where it was given
    (``check(lm, "dsa.configure(lm=...)")``); it raises to refuse the value."""
    global _lm_check
    _lm_check = check


def _check_keys(where: str, values: Mapping[str, Any]) -> None:
    unknown = sorted(set(values) - SETTING_KEYS)
    if unknown:
        advice = [f"{k}: {DSPY_SETTINGS_INSTEAD[k]}" for k in unknown if k in DSPY_SETTINGS_INSTEAD]
        hint = f" (DSPy's {'; '.join(advice)})" if advice else ""
        raise TypeError(
            f"{where}() got unknown setting(s) {unknown}; known settings are "
            f"{sorted(SETTING_KEYS)}{hint}"
        )
    if isinstance(values.get("lm"), str):  # a model name where an LM belongs: say so now
        name = values["lm"]
        raise ValueError(
            f"{where}(lm=...) needs an LM object, not the string {name!r}: use "
            f"{where}(lm=dspy_actors.LM({name!r}))"
        )
    if "lm" in values and _lm_check is not None:
        _lm_check(values["lm"], f"dsa.{where}(lm=...)")


def configure(**values: Any) -> None:
    """Set process-wide defaults, e.g. ``configure(lm=LM(...), adapter=ChatAdapter())``.

    Values given here replace earlier defaults of the same name; others are kept.
    """
    global _defaults
    _check_keys("configure", values)
    with _defaults_lock:
        _defaults = MappingProxyType({**_defaults, **values})


@contextmanager
def context(**values: Any) -> Iterator[None]:
    """Override settings for the current thread or asyncio task, inside the ``with`` block."""
    _check_keys("context", values)
    token = _overrides.set(MappingProxyType({**_overrides.get(), **values}))
    try:
        yield
    finally:
        _overrides.reset(token)


def push_overrides(values: Mapping[str, Any]) -> contextvars.Token[Mapping[str, Any]]:
    """``context(**values)`` without the key check, for overrides already checked (the
    runtime restores a call's captured overrides this way); undo with ``pop_overrides``."""
    current_layer = _overrides.get()
    return _overrides.set(values if not current_layer else {**current_layer, **values})


def pop_overrides(token: contextvars.Token[Mapping[str, Any]]) -> None:
    _overrides.reset(token)


def get(name: str, default: Any = None) -> Any:
    """The effective value of one setting: context override, else configured default."""
    overrides = _overrides.get()
    if name in overrides:
        return overrides[name]
    return _defaults.get(name, default)


def current() -> Mapping[str, Any]:
    """All effective settings as one read-only mapping (overrides over defaults)."""
    overrides = _overrides.get()
    if not overrides:
        return _defaults
    return MappingProxyType({**_defaults, **overrides})


def current_overrides() -> Mapping[str, Any]:
    """Only the ``context(...)`` overrides active here (what a call carries to other threads)."""
    return _overrides.get()


def sampling_overrides() -> dict[str, Any]:
    """The sampling parameters set by ``configure``/``context``, for an LM to apply."""
    # Without merging every setting first (``current``): this runs on each LM call, and a
    # served call's overrides always hold its LM and tool runner.
    defaults, overrides = _defaults, _overrides.get()
    found = {k: v for k, v in defaults.items() if k in SAMPLING_KEYS} if defaults else {}
    for key, value in overrides.items():
        if key in SAMPLING_KEYS:
            found[key] = value
    return found


def reset() -> None:
    """Forget all configured defaults (tests use this; context overrides are untouched)."""
    global _defaults
    with _defaults_lock:
        _defaults = _EMPTY
