"""Readable names for type annotations: ``list[str]``, ``Literal['a', 'b']``, ``Optional[int]``."""

from __future__ import annotations

import types
import typing
from typing import Any, Literal, Union, get_args, get_origin

__all__ = ["annotation_name", "is_optional", "mentions_model"]


def annotation_name(annotation: Any) -> str:
    """The name a person (or an LM) would write for ``annotation``."""
    if annotation is None or annotation is type(None):
        return "None"
    if annotation is Any:
        return "Any"
    origin = get_origin(annotation)
    args = get_args(annotation)
    if origin is Literal:
        return f"Literal[{', '.join(repr(a) for a in args)}]"
    if origin is Union or origin is types.UnionType:
        non_none = [a for a in args if a is not type(None)]
        if len(non_none) == 1 and len(args) == 2:
            return f"Optional[{annotation_name(non_none[0])}]"
        return f"Union[{', '.join(annotation_name(a) for a in args)}]"
    if origin is typing.Annotated:
        return annotation_name(args[0])
    if origin is not None:
        base = getattr(origin, "__name__", str(origin))
        if args:
            inner = ", ".join("..." if a is Ellipsis else annotation_name(a) for a in args)
            return f"{base}[{inner}]"
        return str(base)
    name = getattr(annotation, "__name__", None)
    return name if isinstance(name, str) else str(annotation)


def is_optional(annotation: Any) -> bool:
    """Whether ``None`` is a valid value of ``annotation``."""
    if annotation is None or annotation is type(None) or annotation is Any:
        return True
    origin = get_origin(annotation)
    if origin is Union or origin is types.UnionType:
        return any(a is type(None) for a in get_args(annotation))
    return False


def mentions_model(annotation: Any) -> bool:
    """Whether a pydantic model (or dataclass) appears anywhere inside ``annotation``: its
    name alone does not tell an LM the structure, so prompts add the JSON schema."""
    from pydantic import BaseModel

    if isinstance(annotation, type):
        if issubclass(annotation, BaseModel) and not _is_custom_type(annotation):
            return True
        return hasattr(annotation, "__dataclass_fields__")
    return any(mentions_model(a) for a in get_args(annotation) if a is not Ellipsis)


def _is_custom_type(cls: type) -> bool:
    from dspy_actors.signatures.custom_types import CustomType

    return issubclass(cls, CustomType)
