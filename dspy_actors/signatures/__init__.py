"""Signatures: typed input/output declarations of LM tasks, and custom field types."""

from dspy_actors.signatures._string_form import SignatureSyntaxError
from dspy_actors.signatures._type_names import annotation_name
from dspy_actors.signatures.custom_types import (
    Audio,
    Citations,
    Code,
    CustomType,
    Document,
    History,
    Image,
    Reasoning,
    Tool,
)
from dspy_actors.signatures.field import Field, InputField, OutputField
from dspy_actors.signatures.signature import (
    Signature,
    SignatureMeta,
    ensure_signature,
    make_signature,
)

__all__ = [
    "Audio",
    "Citations",
    "Code",
    "CustomType",
    "Document",
    "Field",
    "History",
    "Image",
    "InputField",
    "OutputField",
    "Reasoning",
    "Signature",
    "SignatureMeta",
    "SignatureSyntaxError",
    "Tool",
    "annotation_name",
    "ensure_signature",
    "make_signature",
]
