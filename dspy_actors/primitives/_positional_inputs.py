"""Clear errors for calls a newcomer gets wrong: inputs passed by position.

A predictor (``Predict``, ``ChainOfThought``) takes its inputs as keywords named by its
signature (``qa(question="...")``), as in DSPy. ``qa("What is 2 + 2?")`` would otherwise
fail inside ``forward`` with Python's bare ``TypeError`` about positional arguments, which
says nothing about which names to use.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

__all__ = ["input_names", "inputs_by_keyword", "keyword_only_error", "takes_positional"]

Call = TypeVar("Call", bound=Callable[..., Any])

_POSITIONAL = (
    inspect.Parameter.POSITIONAL_ONLY,
    inspect.Parameter.POSITIONAL_OR_KEYWORD,
    inspect.Parameter.VAR_POSITIONAL,
)


def takes_positional(module: Any) -> bool:
    """Whether the module's ``forward`` accepts any argument by position."""
    try:
        params = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):  # no introspectable signature: let the call decide
        return True
    return any(p.kind in _POSITIONAL for p in params)


def input_names(module: Any) -> list[str]:
    """The names a module's inputs go by: its signature's input fields for a predictor,
    ``forward``'s keyword parameters otherwise."""
    signature = getattr(module, "signature", None)
    fields = getattr(signature, "input_fields", None)
    if fields is not None:
        return list(fields)
    try:
        params = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):
        return []
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in params if p.kind in named]


def keyword_only_error(
    what: str, names: Iterable[str], args: tuple[Any, ...], call_as: str = "module"
) -> TypeError:
    """The error for ``what`` called with ``args`` by position instead of ``names``;
    ``call_as`` is how the fix is spelled (``module(...)``, ``handle.call(...)``)."""
    listed = list(names)
    example = ", ".join(f"{name}=..." for name in listed) or "<input name>=..."
    fields = ", ".join(repr(n) for n in listed) or "unknown"
    return TypeError(
        f"{what} takes its inputs by keyword, not by position (got {len(args)} positional "
        f"argument(s)); its inputs are {fields}: call it as {call_as}({example})"
    )


def inputs_by_keyword(call: Call) -> Call:
    """Wraps ``Module.__call__``: a module whose ``forward`` takes no positional argument,
    called with one, fails naming its input fields (the check costs nothing otherwise)."""

    @functools.wraps(call)
    def checked(self: Any, *args: Any, **kwargs: Any) -> Any:
        if args and not takes_positional(self):  # qa("...") for qa(question="...")
            raise keyword_only_error(type(self).__name__, input_names(self), args)
        return call(self, *args, **kwargs)

    return checked  # type: ignore[return-value]
