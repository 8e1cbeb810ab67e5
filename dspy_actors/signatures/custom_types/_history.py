"""``History``: the past turns of a conversation, for multi-turn programs."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from dspy_actors.signatures.custom_types._base import CustomType

__all__ = ["History"]


class History(BaseModel, CustomType):
    """Past turns, each a dict of the signature's fields, e.g.
    ``History(messages=[{"question": "...", "answer": "..."}])``.

    Adapters render each turn as a user message (its input fields) followed by an assistant
    message (its output fields), before the current input.
    """

    model_config = ConfigDict(frozen=True)

    messages: list[dict[str, Any]]

    def format(self) -> str:
        # Rendered by the adapter as turns; as plain text it is only used for debugging.
        return "\n".join(str(m) for m in self.messages)
