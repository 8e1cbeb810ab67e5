"""How adapters describe a field's type to the LM."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any, Literal, get_args, get_origin

from pydantic import TypeAdapter

from dspy_actors.signatures._type_names import annotation_name, mentions_model

__all__ = ["json_schema_of", "output_requirement", "structure_note"]


@lru_cache(maxsize=512)
def _schema_cached(annotation: Any) -> str:
    return json.dumps(TypeAdapter(annotation).json_schema(), separators=(",", ":"))


def json_schema_of(annotation: Any) -> dict[str, Any] | None:
    """The JSON schema of ``annotation``, or None if pydantic cannot describe it."""
    try:
        return dict(json.loads(_schema_cached(annotation)))
    except Exception:  # unhashable or unsupported annotation: no schema to show
        try:
            return dict(TypeAdapter(annotation).json_schema())
        except Exception:
            return None


def _literal_options(annotation: Any) -> tuple[Any, ...] | None:
    if get_origin(annotation) is Literal:
        return get_args(annotation)
    return None


def _text_like(annotation: Any) -> bool:
    return bool(getattr(annotation, "prompt_as_text", False)) and isinstance(annotation, type)


def structure_note(annotation: Any) -> str:
    """The note after an output placeholder in the system message ("" for str)."""
    if annotation is str or _text_like(annotation):
        return ""
    if annotation is bool:
        return "must be True or False"
    if annotation in (int, float):
        return f"must be a single {annotation.__name__} value"
    options = _literal_options(annotation)
    if options is not None:
        return (
            f"must exactly match (no extra characters) one of: {'; '.join(str(o) for o in options)}"
        )
    schema = json_schema_of(annotation)
    if schema is None:
        return f"must be a valid {annotation_name(annotation)}"
    return f"must adhere to the JSON schema: {json.dumps(schema, separators=(',', ':'))}"


def output_requirement(annotation: Any) -> str:
    """The parenthesised hint of the final instruction ("" for str), e.g.
    ``" (must be formatted as a valid Python int)"``."""
    if annotation is str or _text_like(annotation):
        return ""
    hint = f"must be formatted as a valid Python {annotation_name(annotation)}"
    if mentions_model(annotation):
        schema = json_schema_of(annotation)
        if schema is not None:
            hint += f", adhering to the JSON schema: {json.dumps(schema, separators=(',', ':'))}"
    return f" ({hint})"
