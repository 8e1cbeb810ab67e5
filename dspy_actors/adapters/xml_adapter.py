"""``XMLAdapter``: fields in and out wrapped in XML tags (DSPy's ``XMLAdapter``).

A completion looks like::

    <reasoning>
    2 plus 2 is 4.
    </reasoning>
    <answer>
    4
    </answer>

Each output field is the text between its first ``<name>`` and the following ``</name>``,
with XML entities (``&lt;``, ``&amp;``) decoded, parsed into the field's type as ChatAdapter
parses a marker section (JSON for lists, dicts and models). As ChatAdapter, a completion
that cannot be parsed is asked again once with :class:`JSONAdapter` (unless disabled).
Differs from DSPy: a structured value is written and read as JSON inside its tag, not as
nested XML elements.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any
from xml.sax.saxutils import escape, unescape

from dspy_actors.adapters._errors import AdapterParseError
from dspy_actors.adapters._type_hints import output_requirement
from dspy_actors.adapters._values import Content, ValueParseError, format_value, parse_text
from dspy_actors.adapters.base import join_content, prompt_inputs
from dspy_actors.adapters.chat_adapter import ChatAdapter
from dspy_actors.signatures.signature import Signature

__all__ = ["XMLAdapter"]


@lru_cache(maxsize=1024)
def _section(name: str) -> re.Pattern[str]:
    return re.compile(rf"<{re.escape(name)}>(.*?)</{re.escape(name)}>", re.DOTALL)


def _tagged(name: str, text: str) -> str:
    return f"<{name}>\n{text}\n</{name}>"


class XMLAdapter(ChatAdapter):
    """Fields under ``<name>...</name>`` tags; see the module docstring."""

    name = "XMLAdapter"

    def __repr__(self) -> str:
        return f"XMLAdapter(use_json_adapter_fallback={self.use_json_adapter_fallback})"

    def input_structure(self, signature: type[Signature]) -> str:
        return "\n\n".join(_tagged(f.name, f"{{{f.name}}}") for f in prompt_inputs(signature))

    def output_structure(self, signature: type[Signature]) -> str:
        blocks = [self.input_structure(signature)] if self.input_structure(signature) else []
        blocks += [_tagged(f.name, ph) for f, ph in self.output_placeholders(signature)]
        return "\n\n".join(blocks)

    def output_instruction(self, signature: type[Signature]) -> str:
        tags = ", then ".join(
            f"`<{f.name}>`{output_requirement(f.annotation)}"
            for f in signature.output_fields.values()
        )
        return f"Respond with the corresponding output fields wrapped in XML tags {tags}."

    def format_inputs(
        self, signature: type[Signature], values: Mapping[str, Any], prefix: str | None = None
    ) -> Content:
        segments: list[Content] = [prefix] if prefix else []
        for f in prompt_inputs(signature):
            if f.name in values:
                body = join_content([f"<{f.name}>", format_value(values[f.name])], "\n")
                segments.append(join_content([body, f"</{f.name}>"], "\n"))
        return join_content(segments)

    def format_outputs(
        self, signature: type[Signature], values: Mapping[str, Any], *, missing: str | None
    ) -> str:
        blocks = []
        for name, field in signature.output_fields.items():
            if name in values:
                value = format_value(values[name])
                text = value if isinstance(value, str) else str(values[name])
                if field.annotation is str:
                    text = escape(text)  # a str value may hold "<": keep the tags readable
            elif missing is not None:
                text = missing
            else:
                continue
            blocks.append(_tagged(name, text))
        return "\n\n".join(blocks)

    def parse(self, signature: type[Signature], completion: str) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for name, field in signature.output_fields.items():
            found = _section(name).search(completion)
            if found is None:
                raise AdapterParseError(
                    name,
                    field.annotation,
                    completion,
                    reason=f"the completion has no `<{name}>...</{name}>` element",
                    adapter=self.name,
                )
            text = unescape(found.group(1).strip())
            try:
                result[name] = parse_text(text, field.annotation)
            except ValueParseError as exc:
                raise AdapterParseError(
                    name, field.annotation, completion, reason=str(exc), adapter=self.name
                ) from exc
        return result
