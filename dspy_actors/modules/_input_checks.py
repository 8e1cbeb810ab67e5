"""What a predictor checks in a call's inputs before calling the LM, as DSPy does: it
warns (and still calls) about inputs the signature does not name, inputs whose value does
not fit the declared type, and declared inputs that were not given."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from pydantic import TypeAdapter, ValidationError

from dspy_actors.adapters.base import is_history
from dspy_actors.signatures._type_names import annotation_name, is_optional
from dspy_actors.signatures.custom_types import CustomType
from dspy_actors.signatures.field import Field
from dspy_actors.signatures.signature import Signature

__all__ = ["checked_inputs", "value_fits"]

log = logging.getLogger("dspy_actors.predict")


@lru_cache(maxsize=1024)
def _strict_adapter(annotation: Any) -> TypeAdapter[Any]:
    return TypeAdapter(annotation)


def value_fits(value: Any, annotation: Any) -> bool:
    """Whether ``value`` already is of type ``annotation`` (no coercion: ``"4"`` does not
    fit ``int``). A list of strings fits ``str`` (DSPy numbers them in the prompt)."""
    if annotation is Any or value is None:
        return True
    if annotation is str:  # the common cases without pydantic: this runs on every call
        return isinstance(value, str) or (
            isinstance(value, list) and all(isinstance(v, str) for v in value)
        )
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if isinstance(annotation, type) and issubclass(annotation, CustomType):
        return True  # custom types accept several source forms (a URL, a path, bytes)
    try:
        adapter = _strict_adapter(annotation)
    except TypeError:  # an unhashable annotation: not cached
        adapter = TypeAdapter(annotation)
    except Exception:  # a type pydantic cannot check: nothing to warn about
        return True
    try:
        adapter.validate_python(value, strict=True)
    except ValidationError:
        return False
    except Exception:
        return True
    return True


def _warn_type(field: Field, value: Any, warn_on_type_mismatch: bool) -> None:
    if warn_on_type_mismatch and field.typed and not value_fits(value, field.annotation):
        shown = repr(value)
        log.warning(
            "Type mismatch for input field %r: the signature declares %s, but the value "
            "given is %s.",
            field.name,
            annotation_name(field.annotation),
            shown if len(shown) <= 200 else shown[:200] + "...",
        )


def checked_inputs(
    signature: type[Signature], kwargs: Mapping[str, Any], *, warn_on_type_mismatch: bool = True
) -> dict[str, Any]:
    """The signature's inputs from a call's kwargs (defaults filled in), warning about
    extra names, type mismatches and missing inputs; the LM is called regardless."""
    extra = [k for k in kwargs if k not in signature.input_fields]
    if extra:
        log.warning(
            "Input contains fields not in the signature %r; they are ignored: %s. Expected "
            "fields: %s.",
            signature.signature,
            extra,
            list(signature.input_fields),
        )
    inputs: dict[str, Any] = {}
    missing: list[str] = []
    for name, field in signature.input_fields.items():
        if name in kwargs:
            inputs[name] = kwargs[name]
            _warn_type(field, kwargs[name], warn_on_type_mismatch)
        elif field.has_default:
            inputs[name] = field.get_default()
        elif not (is_optional(field.annotation) or is_history(field)):
            missing.append(name)
    if missing:
        log.warning(
            "Not all input fields were provided to the predictor for %r. Present: %s. Missing: %s.",
            signature.signature,
            [k for k in signature.input_fields if k in kwargs],
            missing,
        )
    return inputs
