"""The base of custom types: values that format themselves into message content."""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = ["ContentPart", "CustomType"]

ContentPart = dict[str, Any]
"""One OpenAI-style content part: ``{"type": "text", "text": ...}``, ``{"type": "image_url",
...}`` or ``{"type": "input_audio", ...}``."""


class CustomType:
    """A field value an adapter does not render as plain text or JSON.

    ``format()`` returns either text or a list of content parts (images, audio), which the
    adapter splices into the user message in place of the field's value.
    """

    # True for text-like types (Code, Reasoning): prompts ask for them as plain text, not
    # as JSON matching a schema.
    prompt_as_text: ClassVar[bool] = False

    def format(self) -> str | list[ContentPart]:
        raise NotImplementedError
