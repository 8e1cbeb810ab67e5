"""Field declarations: ``InputField``/``OutputField`` and the resolved :class:`Field`."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any, Literal

__all__ = ["MISSING", "Field", "FieldKind", "InputField", "OutputField", "infer_prefix"]

FieldKind = Literal["input", "output"]


class _Missing:
    """Sentinel type for "no default value"."""

    _instance: _Missing | None = None

    def __new__(cls) -> _Missing:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "MISSING"

    def __reduce__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


@dataclass(frozen=True, slots=True)
class Field:
    """One field of a signature: its name, type, role and the text that describes it.

    ``InputField()``/``OutputField()`` create an unbound field (no name yet); the signature
    binds it to the attribute name and annotation when the class is built.
    """

    kind: FieldKind
    name: str = ""
    annotation: Any = str
    desc: str = ""
    prefix: str = ""
    default: Any = MISSING

    @property
    def is_input(self) -> bool:
        return self.kind == "input"

    @property
    def is_output(self) -> bool:
        return self.kind == "output"

    @property
    def has_default(self) -> bool:
        return self.default is not MISSING

    def bind(self, name: str, annotation: Any) -> Field:
        """This field, named ``name`` with type ``annotation`` (prefix inferred if unset)."""
        return replace(
            self, name=name, annotation=annotation, prefix=self.prefix or infer_prefix(name)
        )

    def updated(self, **changes: Any) -> Field:
        """A copy with some attributes changed (``desc``, ``prefix``, ``annotation``...)."""
        return replace(self, **changes)


def InputField(*, desc: str = "", prefix: str = "", default: Any = MISSING) -> Any:
    """Declare an input field: ``question: str = InputField(desc="...")``.

    Returns ``Any`` so the declaration type-checks against any annotation (as in DSPy).
    """
    return Field("input", desc=desc, prefix=prefix, default=default)


def OutputField(*, desc: str = "", prefix: str = "", default: Any = MISSING) -> Any:
    """Declare an output field: ``answer: int = OutputField(desc="...")``."""
    return Field("output", desc=desc, prefix=prefix, default=default)


_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def infer_prefix(name: str) -> str:
    """A human label for a field name: ``question`` -> ``Question:``, ``someFieldName`` and
    ``some_field_name`` -> ``Some Field Name:``."""
    words = [w for w in _CAMEL.sub("_", name).split("_") if w]
    if not words:
        return f"{name}:"
    label = " ".join(w.capitalize() if not w.isupper() else w for w in words)
    return f"{label}:"
