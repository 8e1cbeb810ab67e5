"""Inputs a call can never carry are refused at the door, with an error naming where.

A string with a lone surrogate (``"\\ud800"``, as a bad decode or a JSON ``"\\ud800"`` escape
gives) is a valid Python ``str`` that UTF-8 cannot encode: every LM request built from it
fails, deep inside the HTTP client. Checked once per call, before any module runs, the
caller learns which input and where, instead of a raw ``UnicodeEncodeError`` per attempt.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dspy_actors.runtime._errors import UnencodableInput

# Containers are walked with an explicit stack (an input may be nested arbitrarily deep);
# past this many values the rest is not checked (such inputs fail later, as a module's).
_MAX_VALUES = 100_000


def check_encodable(program: str, inputs: Mapping[str, Any]) -> None:
    """Raise :class:`UnencodableInput` if any string in ``inputs`` (keys included, at any
    depth) cannot be encoded as UTF-8."""
    for value in inputs.values():  # the common case, checked without building a stack
        if type(value) is not str or not value.isascii():
            break
    else:
        return
    stack: list[tuple[str, Any]] = [(repr(name), value) for name, value in inputs.items()]
    seen = 0
    while stack and seen < _MAX_VALUES:
        where, value = stack.pop()
        seen += 1
        if isinstance(value, str):
            _check_text(program, where, value)
        elif isinstance(value, Mapping):
            for key, item in value.items():
                if isinstance(key, str):
                    _check_text(program, f"{where} (a key)", key)
                stack.append((f"{where}[{key!r}]", item))
        elif isinstance(value, list | tuple):
            stack.extend((f"{where}[{i}]", item) for i, item in enumerate(value))


def _check_text(program: str, where: str, text: str) -> None:
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        bad = text[error.start : error.end]
        raise UnencodableInput(
            program,
            where,
            f"it holds a lone surrogate {bad!r} at index {error.start}, which UTF-8 cannot "
            "encode (was the text decoded with errors='surrogateescape'?)",
        ) from None
