"""Field values to prompt text (or content parts), and completion text back to typed values."""

from __future__ import annotations

import ast
import enum
import json
import re
import secrets
import types
from functools import lru_cache
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, TypeAdapter, ValidationError

from dspy_actors.primitives._jsonable import to_jsonable
from dspy_actors.primitives.example import Example
from dspy_actors.signatures.custom_types import ContentPart, CustomType

__all__ = [
    "Content",
    "ValueParseError",
    "constrained",
    "format_value",
    "parse_text",
    "validate_value",
]

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
    if isinstance(data, BaseModel | dict | list | tuple) and _holds_parts(data):
        return _format_with_parts(data)
    jsonable = data.model_dump(mode="json") if isinstance(data, BaseModel) else to_jsonable(data)
    return json.dumps(
        jsonable, ensure_ascii=False, indent=2 if isinstance(jsonable, dict) else None
    )


def _children(value: Any) -> list[Any]:
    if isinstance(value, BaseModel):
        return [getattr(value, name) for name in type(value).model_fields]
    if isinstance(value, Example):
        return list(value.to_dict().values())
    if isinstance(value, dict):
        return list(value.values())
    if isinstance(value, list | tuple):
        return list(value)
    return []


def _holds_parts(value: Any) -> bool:
    """Whether an image or audio (a custom type formatted as content parts) is nested
    anywhere inside ``value``."""
    if isinstance(value, CustomType):
        return not isinstance(value.format(), str)
    return any(_holds_parts(v) for v in _children(value))


_PART_SLOT = re.compile(r'"<<content-part-(\d+)-([0-9a-f]{16})>>"')


def _format_with_parts(value: Any) -> Content:
    """``value`` as JSON text with each nested image or audio cut out of the text and sent
    as its own content part, where it sits (as DSPy does for images inside a model)."""
    nonce = secrets.token_hex(8)  # a slot marker the value's own text cannot forge
    slots: list[list[ContentPart]] = []

    def plain(v: Any) -> Any:
        if isinstance(v, CustomType):
            shown = v.format()
            if isinstance(shown, str):
                return shown
            slots.append(shown)
            return f"<<content-part-{len(slots) - 1}-{nonce}>>"
        if isinstance(v, BaseModel):
            return {name: plain(getattr(v, name)) for name in type(v).model_fields}
        if isinstance(v, Example):
            return plain(v.to_dict())
        if isinstance(v, dict):
            return {str(k): plain(item) for k, item in v.items()}
        if isinstance(v, list | tuple):
            return [plain(item) for item in v]
        return to_jsonable(v)

    data = plain(value)
    text = json.dumps(data, ensure_ascii=False, indent=2 if isinstance(data, dict) else None)
    parts: list[ContentPart] = []
    pos = 0
    for m in _PART_SLOT.finditer(text):
        if m.group(2) != nonce:
            continue
        if m.start() > pos:
            parts.append({"type": "text", "text": text[pos : m.start()]})
        parts.extend(slots[int(m.group(1))])
        pos = m.end()
    if pos < len(text):
        parts.append({"type": "text", "text": text[pos:]})
    return parts


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


def constrained(annotation: Any, constraints: tuple[tuple[str, Any], ...]) -> Any:
    """``annotation`` with a field's pydantic constraints (``ge=0``...) attached, so that
    parsing checks them; ``annotation`` itself when there are none."""
    if not constraints:
        return annotation
    from typing import Annotated

    from pydantic import Field as PydanticField

    return Annotated[annotation, PydanticField(**dict(constraints))]


def _match_enum(text: str, enum_type: type[enum.Enum]) -> enum.Enum:
    """An Enum member from its value or, failing that, its name (as DSPy does: an LM told
    the values may still answer with a member's name)."""
    cand = text.strip().strip("'\"`")
    for member in enum_type:
        if str(member.value) == cand:
            return member
    for member in enum_type:
        if member.name == cand or f"{enum_type.__name__}.{member.name}" == cand:
            return member
    values = [m.value for m in enum_type]
    raise ValueParseError(f"{text!r} is not a value of {enum_type.__name__} {values}")


@lru_cache(maxsize=1024)
def _cached_type_adapter(annotation: Any) -> TypeAdapter[Any]:
    return TypeAdapter(annotation)


def type_adapter(annotation: Any) -> TypeAdapter[Any]:
    """pydantic's ``TypeAdapter`` for ``annotation``, built once per annotation: building
    one costs far more than a validation, and every typed output field of every parsed
    completion needs one. (An unhashable annotation, such as one with constraints
    attached, gets a fresh one.)"""
    try:
        return _cached_type_adapter(annotation)
    except TypeError:  # unhashable
        return TypeAdapter(annotation)


def validate_value(value: Any, annotation: Any) -> Any:
    """Validate an already-decoded value (e.g. from JSON) into ``annotation``."""
    if annotation is str:
        if isinstance(value, str):
            return value.strip()
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, str):
        return parse_text(value, annotation)
    try:
        return type_adapter(annotation).validate_python(value)
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
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return _match_enum(strip_fences(text), annotation)
    body = strip_fences(text)
    adapter = type_adapter(annotation)
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
