"""Field declarations: ``InputField``/``OutputField`` and the resolved :class:`Field`."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

__all__ = [
    "CONSTRAINT_WORDS",
    "MISSING",
    "Field",
    "FieldKind",
    "InputField",
    "OutputField",
    "infer_prefix",
]

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
    # Called for a fresh default each time (DSPy/pydantic's ``default_factory``).
    default_factory: Callable[[], Any] | None = None
    # Renders this input's value for the prompt instead of the default rendering.
    format: Callable[[Any], str] | None = None
    # Pydantic constraints (``ge=0``, ``max_length=5``...) as sorted (name, value) pairs:
    # shown to the LM with the field and checked when an output is parsed.
    constraints: tuple[tuple[str, Any], ...] = ()
    # False when the declaration gave no type (it defaults to str): inputs are not
    # type-checked against it.
    typed: bool = True

    @property
    def is_input(self) -> bool:
        return self.kind == "input"

    @property
    def is_output(self) -> bool:
        return self.kind == "output"

    @property
    def has_default(self) -> bool:
        return self.default is not MISSING or self.default_factory is not None

    def get_default(self) -> Any:
        """The default value (a fresh one from ``default_factory`` if it has one)."""
        if self.default_factory is not None:
            return self.default_factory()
        return self.default

    def constraints_text(self) -> str:
        """The constraints as a person reads them: ``greater than or equal to: 0``."""
        return ", ".join(f"{CONSTRAINT_WORDS[k]}{v}" for k, v in self.constraints)

    def bind(self, name: str, annotation: Any) -> Field:
        """This field, named ``name`` with type ``annotation`` (prefix inferred if unset)."""
        return replace(
            self, name=name, annotation=annotation, prefix=self.prefix or infer_prefix(name)
        )

    def updated(self, **changes: Any) -> Field:
        """A copy with some attributes changed (``desc``, ``prefix``, ``annotation``...)."""
        return replace(self, **changes)


CONSTRAINT_WORDS = {
    "gt": "greater than: ",
    "ge": "greater than or equal to: ",
    "lt": "less than: ",
    "le": "less than or equal to: ",
    "min_length": "minimum length: ",
    "max_length": "maximum length: ",
    "multiple_of": "a multiple of the given number: ",
    "allow_inf_nan": "allow 'inf', '-inf', 'nan' values: ",
}
"""The pydantic constraints a field accepts, with the words the prompt uses for each."""


def _make_field(
    kind: FieldKind,
    desc: str,
    prefix: str,
    default: Any,
    default_factory: Callable[[], Any] | None,
    format: Callable[[Any], str] | None,
    extra: dict[str, Any],
) -> Field:
    description = extra.pop("description", None)
    unknown = sorted(set(extra) - set(CONSTRAINT_WORDS))
    if unknown:
        raise TypeError(
            f"{'InputField' if kind == 'input' else 'OutputField'}() got unknown argument(s) "
            f"{unknown}; it takes desc, prefix, default, default_factory, format and the "
            f"constraints {sorted(CONSTRAINT_WORDS)}"
        )
    if default is not MISSING and default_factory is not None:
        raise TypeError("give a field default or default_factory, not both")
    return Field(
        kind,
        desc=desc or (description if isinstance(description, str) else ""),
        prefix=prefix,
        default=default,
        default_factory=default_factory,
        format=format,
        constraints=tuple(sorted(extra.items())),
    )


def InputField(
    *,
    desc: str = "",
    prefix: str = "",
    default: Any = MISSING,
    default_factory: Callable[[], Any] | None = None,
    format: Callable[[Any], str] | None = None,
    **constraints: Any,
) -> Any:
    """Declare an input field: ``question: str = InputField(desc="...")``.

    ``format`` renders the value for the prompt; pydantic constraints (``ge=0``,
    ``max_length=3``...) are shown to the LM. Returns ``Any`` so the declaration
    type-checks against any annotation (as in DSPy).
    """
    return _make_field("input", desc, prefix, default, default_factory, format, constraints)


def OutputField(
    *,
    desc: str = "",
    prefix: str = "",
    default: Any = MISSING,
    default_factory: Callable[[], Any] | None = None,
    format: Callable[[Any], str] | None = None,
    **constraints: Any,
) -> Any:
    """Declare an output field: ``answer: int = OutputField(desc="...", ge=0)``.

    A ``default`` (or ``default_factory``) is used when the LM leaves the field out;
    constraints are shown to the LM and checked when the output is parsed.
    """
    return _make_field("output", desc, prefix, default, default_factory, format, constraints)


_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def infer_prefix(name: str) -> str:
    """A human label for a field name: ``question`` -> ``Question:``, ``someFieldName`` and
    ``some_field_name`` -> ``Some Field Name:``."""
    words = [w for w in _CAMEL.sub("_", name).split("_") if w]
    if not words:
        return f"{name}:"
    label = " ".join(w.capitalize() if not w.isupper() else w for w in words)
    return f"{label}:"
