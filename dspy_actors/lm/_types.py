"""The values an LM call produces: a whole response, or a stream of events."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dspy_actors.lm._usage import Usage

__all__ = ["Completion", "LMResponse", "StreamEvent"]


@dataclass(frozen=True, slots=True)
class LMResponse:
    """The result of one LM call: one output per choice (``n``), the tokens it cost (zero
    on a cache hit), the model that answered, and how long the call took end to end."""

    outputs: list[str]
    usage: Usage
    model: str
    finish_reasons: list[str | None]
    cache_hit: bool
    latency_s: float
    # Native function calling: per choice, the tool calls the LM made (``{"id", "name",
    # "args"}``); None when the request offered no tools or the LM called none.
    tool_calls: list[list[dict[str, Any]]] | None = None


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """One event of ``LM.stream``: a text delta of choice ``index``, or (last) the final
    event, which carries the whole ``response`` (outputs, usage) and no text."""

    text: str = ""
    index: int = 0
    response: LMResponse | None = None

    @property
    def done(self) -> bool:
        return self.response is not None

    @property
    def usage(self) -> Usage | None:
        return self.response.usage if self.response is not None else None


@dataclass(frozen=True, slots=True)
class Completion:
    """What a provider parsed out of one successful response (wire-format independent)."""

    outputs: list[str]
    finish_reasons: list[str | None]
    prompt_tokens: int
    completion_tokens: int
    model: str
    tool_calls: list[list[dict[str, Any]]] | None = None  # as in LMResponse
