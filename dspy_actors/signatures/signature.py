"""``Signature``: the declared inputs, outputs and instructions of an LM task.

Two forms, as in DSPy::

    class QA(Signature):
        \"\"\"Answer the question with a number.\"\"\"       # the instructions
        question: str = InputField(desc="a arithmetic question")
        answer: int = OutputField()

    QA2 = Signature("question -> answer: int", "Answer with a number.")

Signatures are classes and immutable: ``append``/``prepend``/``insert``/``delete``/
``with_instructions``/``with_updated_fields`` return new signature classes.
"""

from __future__ import annotations

import re
import sys
import types
import typing
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar

from dspy_actors.signatures._string_form import caller_scope_lookup, parse_signature_string
from dspy_actors.signatures._type_names import annotation_name
from dspy_actors.signatures.field import Field, FieldKind

__all__ = ["Signature", "SignatureMeta", "ensure_signature", "make_signature"]

_THIS_PACKAGE = "dspy_actors.signatures"
_IDENTIFIER = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


class SignatureMeta(type):
    """Builds the field table of each signature class and gives signature classes their
    read-only properties and editing methods."""

    _fields: Mapping[str, Field]
    _input_fields: Mapping[str, Field]
    _output_fields: Mapping[str, Field]
    _instructions: str | None

    def __new__(
        mcs,
        name: str,
        bases: tuple[type, ...],
        namespace: dict[str, Any],
        **kwargs: Any,
    ) -> SignatureMeta:
        prebuilt: list[Field] | None = namespace.pop("__signature_fields__", None)
        own = _declared_fields(name, namespace) if prebuilt is None else prebuilt
        for f in own:
            namespace.pop(f.name, None)
        cls = super().__new__(mcs, name, bases, namespace, **kwargs)
        if prebuilt is None:
            own = _resolve_annotations(cls, own)
        fields: dict[str, Field] = {}
        for base in reversed(cls.__mro__[1:]):
            fields.update(getattr(base, "_fields", {}) if isinstance(base, SignatureMeta) else {})
        for f in own:
            fields.pop(f.name, None)
            fields[f.name] = f
        inputs = [f for f in fields.values() if f.is_input]
        outputs = [f for f in fields.values() if f.is_output]
        cls._fields = MappingProxyType({f.name: f for f in inputs + outputs})
        # Precomputed: adapters read these on every call.
        cls._input_fields = MappingProxyType({f.name: f for f in inputs})
        cls._output_fields = MappingProxyType({f.name: f for f in outputs})
        doc = namespace.get("__doc__")
        cls._instructions = _clean_doc(doc) if isinstance(doc, str) else None
        return cls

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        if args and isinstance(args[0], str | dict):
            return make_signature(*args, **kwargs)
        raise TypeError(
            f"{cls.__name__} is a signature class; use it as a class "
            f"(e.g. Predict({cls.__name__})), "
            "or create one with Signature('inputs -> outputs')"
        )

    # -- read-only views ------------------------------------------------------------------
    @property
    def fields(cls) -> Mapping[str, Field]:
        """All fields, inputs first, in declaration order."""
        return cls._fields

    @property
    def input_fields(cls) -> Mapping[str, Field]:
        return cls._input_fields

    @property
    def output_fields(cls) -> Mapping[str, Field]:
        return cls._output_fields

    @property
    def instructions(cls) -> str:
        """The task instructions: the docstring, or a sentence naming the fields."""
        if cls._instructions:
            return cls._instructions
        ins = ", ".join(f"`{k}`" for k in cls.input_fields)
        outs = ", ".join(f"`{k}`" for k in cls.output_fields)
        return (
            f"Given the fields {ins}, produce the fields {outs}."
            if ins
            else f"Produce the fields {outs}."
        )

    @property
    def signature(cls) -> str:
        """The string form, e.g. ``"question -> answer"`` (names only)."""
        return f"{', '.join(cls.input_fields)} -> {', '.join(cls.output_fields)}"

    def __repr__(cls) -> str:
        def part(fields: Mapping[str, Field]) -> str:
            return ", ".join(
                k if f.annotation is str else f"{k}: {annotation_name(f.annotation)}"
                for k, f in fields.items()
            )

        return f"{cls.__name__}({part(cls.input_fields)} -> {part(cls.output_fields)})"

    # -- editing: each returns a new signature class ----------------------------------------
    def with_instructions(cls, instructions: str) -> type[Signature]:
        return _build(cls.__name__, instructions, list(cls._fields.values()))

    def append_instructions(cls, instructions: str) -> type[Signature]:
        """A copy whose instructions are these followed by ``instructions`` (a blank line
        between); ``with_instructions`` replaces them instead."""
        return _build(
            cls.__name__, f"{cls.instructions}\n\n{instructions}", list(cls._fields.values())
        )

    def dump_state(cls) -> dict[str, Any]:
        """Instructions and each field's prefix and description, as JSON data (DSPy's
        shape: ``{"instructions": ..., "fields": [{"prefix": ..., "description": ...}]}``)."""
        return {
            "instructions": cls.instructions,
            "fields": [{"prefix": f.prefix, "description": f.desc} for f in cls._fields.values()],
        }

    def load_state(cls, state: Mapping[str, Any]) -> type[Signature]:
        """A copy with what ``dump_state`` saved: instructions and, field by field in
        order, prefixes and descriptions."""
        saved = state.get("fields", [])
        if not isinstance(saved, list) or len(saved) != len(cls._fields):
            raise ValueError(
                f"signature state has {len(saved) if isinstance(saved, list) else 'no'} "
                f"fields; {cls.__name__} has {len(cls._fields)} ({list(cls._fields)})"
            )
        fields = [
            f.updated(prefix=str(s.get("prefix", f.prefix)), desc=str(s.get("description", f.desc)))
            for f, s in zip(cls._fields.values(), saved, strict=True)
        ]
        instructions = state.get("instructions")
        return _build(
            cls.__name__,
            instructions if isinstance(instructions, str) else cls._instructions,
            fields,
        )

    def with_updated_fields(cls, name: str, type_: Any = None, **changes: Any) -> type[Signature]:
        """A copy with field ``name`` changed: its type and/or ``desc``/``prefix``/``default``."""
        if name not in cls._fields:
            raise KeyError(f"{cls.__name__} has no field {name!r}; fields are {list(cls._fields)}")
        if type_ is not None:
            changes["annotation"] = type_
            changes["typed"] = True
        unknown = set(changes) - {"annotation", "typed", "desc", "prefix", "default"}
        if unknown:
            raise TypeError(
                f"cannot update {sorted(unknown)}; updatable: desc, prefix, default, type_"
            )
        fields = [f.updated(**changes) if f.name == name else f for f in cls._fields.values()]
        return _build(cls.__name__, cls._instructions, fields)

    def insert(cls, index: int, name: str, field: Any, type_: Any = None) -> type[Signature]:
        """A copy with ``field`` (from ``InputField()``/``OutputField()``) inserted at
        ``index`` among the fields of its kind (negative indexes count from the end)."""
        if not isinstance(field, Field):
            raise TypeError("insert/append/prepend need an InputField(...) or OutputField(...)")
        if name in cls._fields:
            raise ValueError(f"{cls.__name__} already has a field {name!r}")
        _check_name(name)
        new = field.bind(name, type_ if type_ is not None else (field.annotation or str))
        inputs = [f for f in cls._fields.values() if f.is_input]
        outputs = [f for f in cls._fields.values() if f.is_output]
        target = inputs if new.is_input else outputs
        pos = index if index >= 0 else len(target) + index + 1
        target.insert(max(0, min(pos, len(target))), new)
        return _build(cls.__name__, cls._instructions, inputs + outputs)

    def append(cls, name: str, field: Any, type_: Any = None) -> type[Signature]:
        return cls.insert(-1, name, field, type_)

    def prepend(cls, name: str, field: Any, type_: Any = None) -> type[Signature]:
        return cls.insert(0, name, field, type_)

    def delete(cls, name: str) -> type[Signature]:
        if name not in cls._fields:
            raise KeyError(f"{cls.__name__} has no field {name!r}; fields are {list(cls._fields)}")
        return _build(
            cls.__name__, cls._instructions, [f for f in cls._fields.values() if f.name != name]
        )

    def equals(cls, other: Any) -> bool:
        """Same instructions and the same fields (names, kinds, types, descriptions)."""
        return (
            isinstance(other, SignatureMeta)
            and cls.instructions == other.instructions
            and list(cls._fields.values()) == list(other._fields.values())
        )


def _clean_doc(doc: str) -> str | None:
    import inspect

    text = inspect.cleandoc(doc).strip()
    return text or None


def _check_name(name: str) -> None:
    import keyword

    if not _IDENTIFIER.match(name) or keyword.iskeyword(name):
        raise ValueError(
            f"invalid field name {name!r}: use a Python identifier not starting with '_'"
        )


def _declared_fields(cls_name: str, namespace: dict[str, Any]) -> list[Field]:
    """Fields declared in a class body, in order, with their raw (possibly string)
    annotations; resolved after the class exists."""
    annotations: dict[str, Any] = namespace.get("__annotations__", {})
    for name, annotation in annotations.items():
        if typing.get_origin(annotation) is ClassVar or (
            isinstance(annotation, str) and annotation.startswith(("ClassVar", "typing.ClassVar"))
        ):
            continue
        if not isinstance(namespace.get(name), Field):
            raise TypeError(
                f"field {name!r} of signature {cls_name} must be declared with InputField() or "
                f"OutputField(), e.g. `{name}: str = InputField()`"
            )
    # The class body's order (annotated or not), which is the prompt's order, as in DSPy.
    out: list[Field] = []
    for name, value in namespace.items():
        if isinstance(value, Field):
            _check_name(name)
            if name in annotations:
                out.append(value.bind(name, annotations[name]))
            else:  # unannotated: a str field, as in DSPy
                out.append(value.bind(name, str).updated(typed=False))
    return out


def _resolve_annotations(cls: type, fields: list[Field]) -> list[Field]:
    """Turn string annotations (``from __future__ import annotations``) into types, looking
    in the defining module and, for classes defined inside functions, the caller's locals."""
    if not any(isinstance(f.annotation, str) for f in fields):
        return fields
    module = sys.modules.get(cls.__module__)
    globalns = dict(vars(module)) if module else {}
    localns: dict[str, Any] = {}
    frame = sys._getframe(2)
    while frame is not None and frame.f_globals.get("__name__", "").startswith(
        "dspy_actors.signatures"
    ):
        frame = frame.f_back  # type: ignore[assignment]
    if frame is not None:
        localns = dict(frame.f_locals)
    try:
        # Annotations are the program's own source code (as for any typed class), not user data.
        # Only this class's own field annotations: a holder object keeps the bases out.
        holder = types.SimpleNamespace(
            __annotations__={f.name: f.annotation for f in fields if isinstance(f.annotation, str)}
        )
        hints = typing.get_type_hints(
            holder, globalns=globalns, localns=localns, include_extras=True
        )
    except Exception as exc:
        raise TypeError(
            f"cannot resolve the field annotations of signature {cls.__name__}: {exc}; "
            "define the types at module level or pass them explicitly"
        ) from exc
    return [f.updated(annotation=hints.get(f.name, f.annotation)) for f in fields]


def _build(name: str, instructions: str | None, fields: list[Field]) -> type[Signature]:
    namespace: dict[str, Any] = {"__signature_fields__": list(fields), "__doc__": instructions}
    namespace["__module__"] = __name__
    return typing.cast("type[Signature]", SignatureMeta(name, (Signature,), namespace))


def make_signature(
    spec: str | Mapping[str, Any],
    instructions: str | None = None,
    signature_name: str = "StringSignature",
    custom_types: Mapping[str, Any] | None = None,
) -> type[Signature]:
    """Build a signature from ``"a, b: int -> c: list[str]"`` or from a mapping
    ``{"a": (str, InputField()), "c": (list[str], OutputField())}``.

    ``custom_types`` adds type names a string may use, e.g. ``{"Answer": Answer}``.
    """
    fields: list[Field] = []
    if isinstance(spec, str):
        inputs, outputs = parse_signature_string(spec, custom_types, caller_scope_lookup())
        for kind, parsed in (("input", inputs), ("output", outputs)):
            for p in parsed:
                fields.append(_string_field(kind, p.name, p.annotation, p.annotated))  # type: ignore[arg-type]
    else:
        for fname, pair in spec.items():
            _check_name(fname)
            if isinstance(pair, Field):  # untyped: a str field
                fields.append(pair.bind(fname, str).updated(typed=False))
                continue
            if not (isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[1], Field)):
                raise TypeError(
                    f"field {fname!r}: expected InputField()/OutputField() or "
                    f"(type, InputField()/OutputField()), not {type(pair).__name__}"
                )
            fields.append(pair[1].bind(fname, pair[0]))
    return _build(signature_name, instructions, fields)


def _string_field(kind: FieldKind, name: str, annotation: Any, typed: bool) -> Field:
    return Field(kind, typed=typed).bind(name, annotation)


def ensure_signature(
    signature: str | type[Signature], instructions: str | None = None
) -> type[Signature]:
    """A signature class from a signature class or a string."""
    if isinstance(signature, str):
        return make_signature(signature, instructions)
    if isinstance(signature, SignatureMeta):
        return signature.with_instructions(instructions) if instructions else signature
    raise TypeError(f"expected a Signature class or a string, not {type(signature).__name__}")


class Signature(metaclass=SignatureMeta):
    """Base class of signatures; ``Signature("a -> b")`` builds one from a string."""

    _fields: ClassVar[Mapping[str, Field]]
    _input_fields: ClassVar[Mapping[str, Field]]
    _output_fields: ClassVar[Mapping[str, Field]]
    _instructions: ClassVar[str | None]

    # Never runs (the metaclass's __call__ handles ``Signature("...")``); it tells type
    # checkers that calling Signature with a string gives a signature class.
    def __new__(  # type: ignore[misc]
        cls,
        spec: str | Mapping[str, Any],
        instructions: str | None = None,
        signature_name: str = "StringSignature",
        custom_types: Mapping[str, Any] | None = None,
    ) -> type[Signature]:
        return make_signature(spec, instructions, signature_name, custom_types)
