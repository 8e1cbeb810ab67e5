"""``Reasoning``: an LM's reasoning as a field value, usable like a string."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, model_serializer, model_validator

from dspy_actors.signatures.custom_types._base import CustomType

__all__ = ["Reasoning"]


class Reasoning(BaseModel, CustomType):
    """The reasoning an LM wrote, as DSPy's ``dspy.Reasoning``: built from a string, shown
    and compared as one (``str(r)``, ``r == "..."``, ``"x" in r``). Prompts treat it as
    text. A provider's native reasoning output is not used to fill it here (the field is
    asked for in the completion like any other): see docs/dspy-behaviour.md."""

    model_config = ConfigDict(frozen=True)
    prompt_as_text: ClassVar[bool] = True

    content: str

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, value: Any) -> Any:
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            return {"content": value}
        if isinstance(value, dict) and isinstance(value.get("content"), str):
            return {"content": value["content"]}
        raise ValueError(
            f"Reasoning takes a string or {{'content': str}}, not {type(value).__name__}"
        )

    @model_serializer
    def _as_text(self) -> str:
        return self.content

    def format(self) -> str:
        return self.content

    def __str__(self) -> str:
        return self.content

    def __repr__(self) -> str:
        return repr(self.content)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Reasoning):
            return self.content == other.content
        if isinstance(other, str):
            return self.content == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.content)

    def __len__(self) -> int:
        return len(self.content)

    def __contains__(self, text: str) -> bool:
        return text in self.content

    def __getattr__(self, name: str) -> Any:
        # Any other str method (``.split()``, ``.upper()``...) works on the text.
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.content, name)
