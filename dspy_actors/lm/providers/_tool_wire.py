"""Native function calling on the wire: tool calls out of OpenAI and Anthropic responses
(whole, or assembled from streamed deltas), and OpenAI-format tools and tool messages
translated for Anthropic.

A tool call, wire-format independent, is ``{"id": str | None, "name": str, "args": dict}``.
Arguments that are not a JSON object are kept as ``{"__raw__": text}`` so the adapter can
report them (naming the tool) instead of the provider failing the whole response.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "AnthropicToolStream",
    "OpenAIToolDeltas",
    "anthropic_tool_calls",
    "anthropic_tools",
    "openai_tool_calls",
    "parse_arguments",
]

ToolCall = dict[str, Any]


def parse_arguments(text: Any) -> dict[str, Any]:
    """A tool call's arguments: a JSON object (text or already decoded)."""
    if isinstance(text, Mapping):
        return dict(text)
    if not text:
        return {}
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        return {"__raw__": str(text)}
    return value if isinstance(value, dict) else {"__raw__": str(text)}


def openai_tool_calls(message: Mapping[str, Any]) -> list[ToolCall]:
    """The tool calls of an OpenAI ``choices[].message``."""
    calls: list[ToolCall] = []
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        calls.append(
            {
                "id": call.get("id"),
                "name": str(function.get("name") or ""),
                "args": parse_arguments(function.get("arguments")),
            }
        )
    return calls


class OpenAIToolDeltas:
    """Assembles streamed ``delta.tool_calls`` fragments (id and name first, then the
    arguments text in pieces), per choice and per tool-call index."""

    def __init__(self) -> None:
        self._calls: dict[int, dict[int, dict[str, Any]]] = {}

    def feed(self, choice_index: int, delta: Mapping[str, Any]) -> None:
        for fragment in delta.get("tool_calls") or ():
            slot = self._calls.setdefault(choice_index, {}).setdefault(
                int(fragment.get("index") or 0), {"id": None, "name": "", "arguments": ""}
            )
            if fragment.get("id"):
                slot["id"] = fragment["id"]
            function = fragment.get("function") or {}
            if function.get("name"):
                slot["name"] += function["name"]
            if function.get("arguments"):
                slot["arguments"] += function["arguments"]

    def result(self, indices: Sequence[int]) -> list[list[ToolCall]] | None:
        if not self._calls:
            return None
        return [
            [
                {"id": c["id"], "name": c["name"], "args": parse_arguments(c["arguments"])}
                for _, c in sorted(self._calls.get(i, {}).items())
            ]
            for i in indices
        ]


def anthropic_tools(tools: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI-format ``tools`` entries as Anthropic's (``name``, ``description``,
    ``input_schema``); entries already in Anthropic's format pass as they are."""
    out: list[dict[str, Any]] = []
    for tool in tools:
        function = tool.get("function") if tool.get("type") == "function" else None
        if isinstance(function, Mapping):
            out.append(
                {
                    "name": function.get("name"),
                    "description": function.get("description") or "",
                    "input_schema": function.get("parameters") or {"type": "object"},
                }
            )
        else:
            out.append(dict(tool))
    return out


def anthropic_tool_choice(choice: Any) -> Any:
    """OpenAI's ``tool_choice`` as Anthropic's."""
    if choice == "auto":
        return {"type": "auto"}
    if choice == "required":
        return {"type": "any"}
    if isinstance(choice, Mapping) and choice.get("type") == "function":
        return {"type": "tool", "name": (choice.get("function") or {}).get("name")}
    return choice


def anthropic_turn(message: Mapping[str, Any]) -> dict[str, Any] | None:
    """An OpenAI-format assistant tool-call message or ``tool`` result message as an
    Anthropic turn (``tool_use`` / ``tool_result`` blocks); None for other messages."""
    if message.get("role") == "tool":
        return {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": message.get("tool_call_id"),
                    "content": str(message.get("content") or ""),
                }
            ],
        }
    if message.get("role") == "assistant" and message.get("tool_calls"):
        blocks: list[dict[str, Any]] = []
        if message.get("content"):
            blocks.append({"type": "text", "text": str(message["content"])})
        for call in openai_tool_calls(message):
            blocks.append(
                {"type": "tool_use", "id": call["id"], "name": call["name"], "input": call["args"]}
            )
        return {"role": "assistant", "content": blocks}
    return None


def anthropic_tool_calls(blocks: Sequence[Mapping[str, Any]]) -> list[ToolCall]:
    """The ``tool_use`` blocks of an Anthropic response."""
    return [
        {
            "id": b.get("id"),
            "name": str(b.get("name") or ""),
            "args": parse_arguments(b.get("input")),
        }
        for b in blocks
        if b.get("type") == "tool_use"
    ]


class AnthropicToolStream:
    """Assembles streamed ``tool_use`` blocks: ``content_block_start`` names the tool,
    ``input_json_delta`` events carry its input JSON in pieces."""

    def __init__(self) -> None:
        self._blocks: dict[int, dict[str, Any]] = {}

    def start(self, index: int, block: Mapping[str, Any]) -> None:
        if block.get("type") == "tool_use":
            self._blocks[index] = {"id": block.get("id"), "name": block.get("name"), "json": ""}

    def delta(self, index: int, delta: Mapping[str, Any]) -> None:
        if delta.get("type") == "input_json_delta" and index in self._blocks:
            self._blocks[index]["json"] += str(delta.get("partial_json") or "")

    def result(self) -> list[list[ToolCall]] | None:
        if not self._blocks:
            return None
        return [
            [
                {"id": b["id"], "name": str(b["name"] or ""), "args": parse_arguments(b["json"])}
                for _, b in sorted(self._blocks.items())
            ]
        ]
