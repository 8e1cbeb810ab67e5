"""``Code``: source code as a field value; ``Code["java"]`` names the language."""

from __future__ import annotations

import re
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, create_model, model_serializer, model_validator

from dspy_actors.signatures.custom_types._base import CustomType

__all__ = ["Code"]

_FENCED = re.compile(r"```[^\n]*\n(.*?)```", re.S)
_INLINE = re.compile(r"```(.*?)```", re.S)


def _unfence(text: str) -> str:
    """The code inside a markdown fence (with or without a language tag), else the text."""
    for pattern in (_FENCED, _INLINE):
        m = pattern.search(text)
        if m:
            return m.group(1).strip()
    return text


class Code(BaseModel, CustomType):
    """Code, as DSPy's ``dspy.Code``: an input is shown as the code itself; an output is
    asked for in a fenced block and parsed back to the code without the fence. ``.code``
    holds the text; ``Code["java"]`` is the type for another language (default Python)."""

    model_config = ConfigDict(frozen=True)
    prompt_as_text: ClassVar[bool] = True
    language: ClassVar[str] = "python"

    code: str

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, value: Any) -> Any:
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            return {"code": _unfence(value)}
        if isinstance(value, dict) and isinstance(value.get("code"), str):
            return {"code": _unfence(value["code"])}
        raise ValueError(f"Code takes a string or {{'code': str}}, not {type(value).__name__}")

    @model_serializer
    def _as_text(self) -> str:
        return self.code

    def __class_getitem__(cls, language: Any) -> Any:
        if not isinstance(language, str) or not language:
            raise TypeError('Code[...] takes a language name, e.g. Code["java"]')
        sub = create_model(f"Code_{language}", __base__=cls)
        sub.language = language
        return sub

    @classmethod
    def description(cls) -> str:
        return (
            "Code, written inside a markdown code block, e.g.\n"
            f"```{cls.language.lower()}\n{{code}}\n```\nProgramming language: {cls.language}"
        )

    def format(self) -> str:
        return self.code

    def __str__(self) -> str:
        return self.code
