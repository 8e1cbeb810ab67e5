"""Convert values (examples, pydantic models, custom types) to plain JSON data."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from dspy_actors.primitives.example import Example

__all__ = ["to_jsonable"]


def to_jsonable(value: Any) -> Any:
    """``value`` as JSON-compatible data (dicts, lists, str, numbers, bools, None).

    Raises ``TypeError`` for values that have no JSON form, rather than writing something
    that would not load back.
    """
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, Example):
        return {k: to_jsonable(v) for k, v in value.items(include_dspy=True)}
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_jsonable(v) for v in value]
    try:
        return to_jsonable_python(value)
    except Exception as exc:  # pydantic raises its own error type; normalise it
        raise TypeError(f"cannot convert a {type(value).__name__} to JSON: {exc}") from exc
