"""Native function calling for adapters (``ChatAdapter(use_native_function_calling=True)``).

When a signature has an input typed ``list[Tool]`` and an output typed ``ToolCalls``, the
tools leave the prompt and go to the provider's ``tools`` field (OpenAI ``tools``,
Anthropic ``tools`` with ``tool_use``), and the ``ToolCalls`` output is filled from the
response's tool calls instead of being parsed from text. The other fields are formatted
and parsed as usual; when the LM calls a tool and writes no text, they are None, as in
DSPy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, get_args, get_origin

from dspy_actors.adapters._errors import AdapterParseError
from dspy_actors.signatures.custom_types._tool import Tool, ToolCall, ToolCalls
from dspy_actors.signatures.signature import Signature

__all__ = ["NativeToolPlan", "plan_native_tools"]


@dataclass(frozen=True, slots=True)
class NativeToolPlan:
    """How one call uses native function calling: the signature and inputs without the
    tools and tool-calls fields, and the LM keyword arguments with the tools added."""

    signature: type[Signature]
    inputs: dict[str, Any]
    lm_kwargs: dict[str, Any]
    calls_field: str

    def outputs(
        self,
        texts: list[str],
        tool_calls: list[list[dict[str, Any]]] | None,
        parse: Callable[[type[Signature], str], dict[str, Any]],
    ) -> list[dict[str, Any]]:
        """One dict of output values per choice: parsed text fields plus the calls."""
        results: list[dict[str, Any]] = []
        for index, text in enumerate(texts):
            calls = (tool_calls[index] if tool_calls and index < len(tool_calls) else None) or []
            values: dict[str, Any]
            if text.strip() and self.signature.output_fields:
                try:
                    values = parse(self.signature, text)
                except AdapterParseError:
                    if not calls:
                        raise
                    values = dict.fromkeys(self.signature.output_fields)
            else:
                values = dict.fromkeys(self.signature.output_fields)
            values[self.calls_field] = (
                ToolCalls(tool_calls=[ToolCall(**c) for c in calls]) if calls else None
            )
            results.append(values)
        return results


def plan_native_tools(
    signature: type[Signature], inputs: Mapping[str, Any], lm_kwargs: Mapping[str, Any]
) -> NativeToolPlan | None:
    """The plan for a signature with a ``list[Tool]`` input and a ``ToolCalls`` output;
    None for any other signature (it is then handled as usual)."""
    tools_field = next(
        (n for n, f in signature.input_fields.items() if _is_tool_list(f.annotation)), None
    )
    calls_field = next(
        (n for n, f in signature.output_fields.items() if f.annotation is ToolCalls), None
    )
    if tools_field is None or calls_field is None:
        return None
    given = inputs.get(tools_field) or []
    tools = [t if isinstance(t, Tool) else Tool(t) for t in given]
    kwargs = dict(lm_kwargs)
    if tools:
        kwargs["tools"] = [t.to_openai() for t in tools]
    return NativeToolPlan(
        signature=signature.delete(tools_field).delete(calls_field),
        inputs={k: v for k, v in inputs.items() if k != tools_field},
        lm_kwargs=kwargs,
        calls_field=calls_field,
    )


def _is_tool_list(annotation: Any) -> bool:
    return get_origin(annotation) is list and get_args(annotation) == (Tool,)
