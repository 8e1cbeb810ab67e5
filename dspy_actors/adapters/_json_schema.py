"""The ``response_format`` JSONAdapter sends: a JSON schema of the output fields."""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any

from pydantic import TypeAdapter

from dspy_actors.signatures.signature import Signature

__all__ = ["output_schema", "response_format_for"]


def output_schema(signature: type[Signature]) -> dict[str, Any]:
    """A JSON schema of an object with one property per output field (all required)."""
    properties: dict[str, Any] = {}
    defs: dict[str, Any] = {}
    for name, field in signature.output_fields.items():
        schema = dict(TypeAdapter(field.annotation).json_schema(ref_template="#/$defs/{model}"))
        defs.update(schema.pop("$defs", {}))
        properties[name] = schema
    schema = {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }
    if defs:
        schema["$defs"] = defs
    return schema


def _strictify(node: Any) -> bool:
    """Make ``node`` fit OpenAI strict structured outputs in place (every object closed,
    every property required, no defaults); False if that is impossible (free-form dicts)."""
    if isinstance(node, list):
        return all(_strictify(n) for n in node)
    if not isinstance(node, dict):
        return True
    node.pop("default", None)
    ok = True
    if node.get("type") == "object":
        if "properties" not in node or isinstance(node.get("additionalProperties"), dict):
            ok = False
        else:
            node["additionalProperties"] = False
            node["required"] = list(node["properties"])
    for key, value in node.items():
        if key in ("properties", "$defs"):
            ok = all(_strictify(v) for v in value.values()) and ok
        elif isinstance(value, dict | list):
            ok = _strictify(value) and ok
    return ok


def response_format_for(lm: Any, signature: type[Signature]) -> dict[str, Any]:
    """A ``json_schema`` response format where the LM supports it, else ``json_object``."""
    if not getattr(lm, "supports_json_schema", False):
        return {"type": "json_object"}
    # A fresh copy each call (the caller may change it); the schema itself is built once.
    return json.loads(_schema_format_text(signature))  # type: ignore[no-any-return]


@lru_cache(maxsize=1024)
def _schema_format_text(signature: type[Signature]) -> str:
    """The ``json_schema`` response format of ``signature`` as JSON text: signatures are
    immutable, and building the schema (a pydantic TypeAdapter per output field) costs
    far more than decoding it."""
    schema = output_schema(signature)
    strict = _strictify(schema)
    name = re.sub(r"[^A-Za-z0-9_-]", "_", signature.__name__)[:64] or "Output"
    return json.dumps(
        {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": strict}}
    )
