"""Field values to prompt text (or content parts), and completion text back to typed values."""

from __future__ import annotations

import ast
import json
import re
import types
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, TypeAdapter, ValidationError

from dspy_actors.primitives.example import Example
from dspy_actors.primitives.jsonable import to_jsonable
from dspy_actors.signatures.custom_types import ContentPart, CustomType

__all__ = ["Content", "ValueParseError", "format_value", "parse_text", "validate_value"]

Content = str | list[ContentPart]
"""A field's rendering: text, or content parts when it holds images or audio."""


class ValueParseError(ValueError):
    """A value that does not fit its declared type (the reason is the message)."""


def format_value(value: Any) -> Content:
    """Render a field value for a prompt: strings as they are, lists of strings numbered,
    custom types (images, audio) as content parts, everything else as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, CustomType):
        return value.format()
    if isinstance(value, list | tuple) and any(isinstance(v, CustomType) for v in value):
        items = [format_value(v) for v in value]
        if all(isinstance(i, str) for i in items):  # e.g. tools: plain text, one per line
            return "\n".join(i for i in items if isinstance(i, str))
        return _join_parts(items, sep="\n")
    if isinstance(value, list | tuple) and value and all(isinstance(v, str) for v in value):
        return "\n".join(f"[{i}] «{v}»" for i, v in enumerate(value, 1))
    if isinstance(value, bool | int | float) or value is None:
        return str(value)
    data = value.to_dict() if isinstance(value, Example) else value
    jsonable = data.model_dump(mode="json") if isinstance(data, BaseModel) else to_jsonable(data)
    return json.dumps(
        jsonable, ensure_ascii=False, indent=2 if isinstance(jsonable, dict) else None
    )


def _join_parts(items: list[Content], sep: str) -> Content:
    parts: list[ContentPart] = []
    for i, item in enumerate(items):
        if i:
            parts.append({"type": "text", "text": sep})
        parts.extend([{"type": "text", "text": item}] if isinstance(item, str) else item)
    return parts


_FENCE = re.compile(r"^```[\w-]*\s*\n?(.*?)\n?```$", re.S)


def strip_fences(text: str) -> str:
    m = _FENCE.match(text.strip())
    return m.group(1).strip() if m else text.strip()


def _literal_options(annotation: Any) -> tuple[Any, ...] | None:
    origin = get_origin(annotation)
    if origin is Literal:
        return get_args(annotation)
    if origin is Union or origin is types.UnionType:
        opts: list[Any] = []
        for arg in get_args(annotation):
            if arg is type(None):
                opts.append(None)
                continue
            sub = _literal_options(arg)
            if sub is None:
                return None
            opts.extend(sub)
        return tuple(opts)
    return None


def _match_literal(text: str, options: tuple[Any, ...]) -> Any:
    candidates = [text, text.strip("'\"`"), text.strip("'\"`").rstrip(".")]
    for cand in candidates:
        for opt in options:
            if cand == str(opt) or (opt is None and cand in ("None", "null")):
                return opt
    lowered = [c.lower() for c in candidates]
    for opt in options:
        if str(opt).lower() in lowered:
            return opt
    raise ValueParseError(f"{text!r} is not one of {list(options)}")


def validate_value(value: Any, annotation: Any) -> Any:
    """Validate an already-decoded value (e.g. from JSON) into ``annotation``."""
    if annotation is str:
        if isinstance(value, str):
            return value.strip()
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, str):
        return parse_text(value, annotation)
    try:
        return TypeAdapter(annotation).validate_python(value)
    except ValidationError as exc:
        raise ValueParseError(_short(exc)) from exc


def parse_text(text: str, annotation: Any) -> Any:
    """Parse a completion's text for one field into ``annotation``, leniently: ``"4"`` is
    an int, JSON (or a Python literal) is a list, dict or model, ``"'yes'"`` matches
    ``Literal['yes', 'no']``. Never evaluates code (``ast.literal_eval`` only)."""
    text = text.strip()
    if annotation is str or annotation is Any:
        return text
    options = _literal_options(annotation)
    if options is not None:
        return _match_literal(strip_fences(text), options)
    body = strip_fences(text)
    adapter = TypeAdapter(annotation)
    first_error: ValidationError | None = None
    try:
        return adapter.validate_json(body)
    except ValidationError as exc:
        first_error = exc
    try:
        return adapter.validate_python(ast.literal_eval(body))
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError, ValidationError):
        pass
    try:
        return adapter.validate_python(body)
    except ValidationError:
        pass
    raise ValueParseError(_short(first_error))


def _short(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False)
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) + ': ' if e['loc'] else ''}{e['msg']}"
        for e in errors[:3]
    )
