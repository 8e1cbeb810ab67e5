"""``ChatAdapter``: the ``[[ ## field ## ]]`` marker convention.

A completion looks like::

    [[ ## reasoning ## ]]
    2 plus 2 is 4.

    [[ ## answer ## ]]
    4

    [[ ## completed ## ]]

On a parse failure it retries once with :class:`JSONAdapter` (unless disabled).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from dspy_actors.adapters._errors import AdapterParseError
from dspy_actors.adapters._type_hints import output_requirement
from dspy_actors.adapters._values import ValueParseError, constrained, format_value, parse_text
from dspy_actors.adapters.base import (
    Adapter,
    fallback_for_missing,
    field_marker,
    is_missing_required,
)
from dspy_actors.lm._steps import Steps
from dspy_actors.primitives.example import Example
from dspy_actors.signatures.signature import Signature

__all__ = ["COMPLETED_MARKER", "ChatAdapter"]

COMPLETED_MARKER = field_marker("completed")
_MARKER = re.compile(r"\[\[ ## (\w+) ## \]\]")


class ChatAdapter(Adapter):
    """Fields in and out under ``[[ ## name ## ]]`` markers.

    ``use_json_adapter_fallback``: on a completion that cannot be parsed, ask again once
    with :class:`JSONAdapter`; the error finally raised names the field, the expected type
    and the raw completion.
    """

    name = "ChatAdapter"

    def __init__(
        self, *, use_json_adapter_fallback: bool = True, use_native_function_calling: bool = False
    ) -> None:
        self.use_json_adapter_fallback = use_json_adapter_fallback
        self.use_native_function_calling = use_native_function_calling

    def __repr__(self) -> str:
        return f"ChatAdapter(use_json_adapter_fallback={self.use_json_adapter_fallback})"

    def steps(
        self,
        lm: Any,
        lm_kwargs: Mapping[str, Any],
        signature: type[Signature],
        demos: Sequence[Example | Mapping[str, Any]],
        inputs: Mapping[str, Any],
    ) -> Steps[list[dict[str, Any]]]:
        try:
            return (yield from super().steps(lm, lm_kwargs, signature, demos, inputs))
        except AdapterParseError as chat_error:
            if not self.use_json_adapter_fallback:
                raise
            from dspy_actors.adapters.json_adapter import JSONAdapter

            try:
                return (yield from JSONAdapter().steps(lm, lm_kwargs, signature, demos, inputs))
            except AdapterParseError as json_error:
                raise json_error.after(chat_error) from chat_error

    def output_structure(self, signature: type[Signature]) -> str:
        blocks = [self.input_structure(signature)] if self.input_structure(signature) else []
        blocks += [f"{field_marker(f.name)}\n{ph}" for f, ph in self.output_placeholders(signature)]
        blocks.append(COMPLETED_MARKER)
        return "\n\n".join(blocks)

    def output_instruction(self, signature: type[Signature]) -> str:
        """ "Respond with the corresponding output fields, starting with the field
        `[[ ## a ## ]]`, then `[[ ## b ## ]]` (must be ...), and then ending with the marker
        for `[[ ## completed ## ]]`." (SimLM's default responder reads this sentence.)"""
        clauses = [
            f"`{field_marker(f.name)}`{output_requirement(f.annotation)}"
            for f in signature.output_fields.values()
        ]
        text = "Respond with the corresponding output fields, starting with the field " + clauses[0]
        for clause in clauses[1:]:
            text += f", then {clause}"
        return text + f", and then ending with the marker for `{COMPLETED_MARKER}`."

    def format_outputs(
        self, signature: type[Signature], values: Mapping[str, Any], *, missing: str | None
    ) -> str:
        blocks = []
        for name in signature.output_fields:
            if name in values:
                value = format_value(values[name])
                text = value if isinstance(value, str) else str(values[name])
            elif missing is not None:
                text = missing
            else:
                continue
            blocks.append(f"{field_marker(name)}\n{text}")
        blocks.append(COMPLETED_MARKER)
        return "\n\n".join(blocks)

    def parse(self, signature: type[Signature], completion: str) -> dict[str, Any]:
        sections: dict[str, str] = {}
        matches = list(_MARKER.finditer(completion))
        for i, m in enumerate(matches):
            end = matches[i + 1].start() if i + 1 < len(matches) else len(completion)
            name = m.group(1)
            if name in signature.output_fields and name not in sections:
                sections[name] = completion[m.end() : end].strip()
        result: dict[str, Any] = {}
        for name, field in signature.output_fields.items():
            if name not in sections:
                fallback = fallback_for_missing(field)
                if not is_missing_required(fallback):
                    result[name] = fallback
                    continue
                raise AdapterParseError(
                    name,
                    field.annotation,
                    completion,
                    reason=f"the completion has no `{field_marker(name)}` section",
                    adapter=self.name,
                )
            try:
                result[name] = parse_text(
                    sections[name], constrained(field.annotation, field.constraints)
                )
            except ValueParseError as exc:
                raise AdapterParseError(
                    name, field.annotation, completion, reason=str(exc), adapter=self.name
                ) from exc
        return result
