"""``Document`` (a source an LM may cite) and ``Citations`` (what it cited)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, model_validator

from dspy_actors.signatures.custom_types._base import CustomType

__all__ = ["Citation", "Citations", "Document"]


class Document(BaseModel, CustomType):
    """A document given to the LM, as DSPy's ``dspy.Document``: its text (``data``), an
    optional ``title`` and ``context``. Shown to the LM as text under its title; a list of
    documents is numbered from 0, the ``document_index`` citations refer to."""

    model_config = ConfigDict(frozen=True)

    data: str
    title: str | None = None
    media_type: Literal["text/plain"] = "text/plain"
    context: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"data": value}
        return value

    def format(self) -> str:
        head = f"Title: {self.title}\n" if self.title else ""
        note = f"Context: {self.context}\n" if self.context else ""
        return f"{head}{note}{self.data}"

    def __str__(self) -> str:
        title = f"'{self.title}': " if self.title else ""
        return f"Document({title}{len(self.data)} chars)"


class Citation(BaseModel):
    """One cited passage: the quoted text, which document (by index) and where in it."""

    type: str = "char_location"
    cited_text: str
    document_index: int
    document_title: str | None = None
    start_char_index: int
    end_char_index: int
    supported_text: str | None = None


class Citations(BaseModel, CustomType):
    """The passages an answer cites, as DSPy's ``dspy.Citations``: iterable, indexable,
    built from a list of citation dicts (``from_dict_list``). As an output, the LM writes
    them as a JSON list of citation objects."""

    model_config = ConfigDict(frozen=True)

    citations: list[Citation]

    @model_validator(mode="before")
    @classmethod
    def _from_list(cls, value: Any) -> Any:
        if isinstance(value, list):
            return {"citations": value}
        if isinstance(value, dict) and "cited_text" in value:
            return {"citations": [value]}
        return value

    @classmethod
    def from_dict_list(cls, items: list[dict[str, Any]]) -> Citations:
        return cls(citations=[Citation(**item) for item in items])

    def format(self) -> str:
        import json

        return json.dumps([c.model_dump(exclude_none=True) for c in self.citations])

    def __iter__(self) -> Any:
        return iter(self.citations)

    def __len__(self) -> int:
        return len(self.citations)

    def __getitem__(self, index: int) -> Citation:
        return self.citations[index]


# DSPy's spelling for one citation: ``Citations.Citation``.
Citations.Citation = Citation  # type: ignore[attr-defined]
