"""``JSONAdapter``: inputs under markers, outputs as one JSON object (structured output
where the provider supports it)."""

from __future__ import annotations

import ast
import json
from collections.abc import Mapping
from typing import Any

from dspy_actors.adapters._errors import AdapterParseError
from dspy_actors.adapters._json_schema import response_format_for
from dspy_actors.adapters._type_hints import output_requirement
from dspy_actors.adapters._values import (
    ValueParseError,
    constrained,
    strip_fences,
    validate_value,
)
from dspy_actors.adapters.base import Adapter, fallback_for_missing, is_missing_required
from dspy_actors.primitives._jsonable import to_jsonable
from dspy_actors.signatures.signature import Signature

__all__ = ["JSONAdapter"]


class JSONAdapter(Adapter):
    """Asks for a JSON object with the output fields and validates each into its type."""

    name = "JSONAdapter"

    def __repr__(self) -> str:
        return "JSONAdapter()"

    def response_format(self, lm: Any, signature: type[Signature]) -> dict[str, Any] | None:
        return response_format_for(lm, signature)

    def output_structure(self, signature: type[Signature]) -> str:
        inputs = self.input_structure(signature)
        head = f"Inputs will have the following structure:\n\n{inputs}\n\n" if inputs else ""
        lines = [f'  "{f.name}": "{ph}"' for f, ph in self.output_placeholders(signature)]
        body = "{\n" + ",\n".join(lines) + "\n}"
        return f"{head}Outputs will be a JSON object with the following fields.\n\n{body}"

    def output_instruction(self, signature: type[Signature]) -> str:
        clauses = [
            f"`{f.name}`{output_requirement(f.annotation)}"
            for f in signature.output_fields.values()
        ]
        return (
            "Respond with a JSON object in the following order of fields: "
            + ", then ".join(clauses)
            + "."
        )

    def format_outputs(
        self, signature: type[Signature], values: Mapping[str, Any], *, missing: str | None
    ) -> str:
        data: dict[str, Any] = {}
        for name in signature.output_fields:
            if name in values:
                data[name] = to_jsonable(values[name])
            elif missing is not None:
                data[name] = missing
        return json.dumps(data, ensure_ascii=False, indent=2)

    def parse(self, signature: type[Signature], completion: str) -> dict[str, Any]:
        first = next(iter(signature.output_fields.values()))
        data = _decode_object(completion)
        if data is None:
            raise AdapterParseError(
                first.name,
                first.annotation,
                completion,
                reason="the completion is not a JSON object",
                adapter=self.name,
            )
        result: dict[str, Any] = {}
        for name, field in signature.output_fields.items():
            if name not in data:
                fallback = fallback_for_missing(field)
                if not is_missing_required(fallback):
                    result[name] = fallback
                    continue
                raise AdapterParseError(
                    name,
                    field.annotation,
                    completion,
                    reason=f"the JSON object has no key {name!r}",
                    adapter=self.name,
                )
            try:
                result[name] = validate_value(
                    data[name], constrained(field.annotation, field.constraints)
                )
            except ValueParseError as exc:
                raise AdapterParseError(
                    name, field.annotation, completion, reason=str(exc), adapter=self.name
                ) from exc
        return result


def _decode_object(text: str) -> dict[str, Any] | None:
    """The JSON object in ``text`` (fenced or surrounded by prose), if there is one."""
    body = strip_fences(text)
    candidates = [body]
    start, end = body.find("{"), body.rfind("}")
    if 0 <= start < end:
        candidates.append(body[start : end + 1])
    for cand in candidates:
        try:
            value = json.loads(cand)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    return _repaired_object(candidates[-1])


def _repaired_object(text: str) -> dict[str, Any] | None:
    """Near-JSON an LM wrote, repaired: a Python dict literal (``{'a': 'x'}``, read with
    ``ast.literal_eval``, which never runs code), else json-repair's fixes (missing quotes
    or commas, trailing commas, an unclosed brace), as DSPy does."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        value = None
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return value
    import json_repair

    try:
        repaired = json_repair.loads(text)
    except Exception:  # json-repair gives up on some inputs: that is "not an object"
        return None
    return repaired if isinstance(repaired, dict) and repaired else None
