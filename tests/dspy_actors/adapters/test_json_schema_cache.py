"""JSONAdapter's response format is built once per signature: each call still gets its own
copy, so a caller that changes the one it got changes nothing for the next call."""

from __future__ import annotations

from typing import Any

from dspy_actors.adapters._json_schema import response_format_for
from dspy_actors.signatures.signature import ensure_signature


class SchemaLM:
    supports_json_schema = True


def test_each_call_gets_its_own_copy_of_the_same_format() -> None:
    signature = ensure_signature("question -> answer: int, reasons: list[str]")
    first = response_format_for(SchemaLM(), signature)
    second = response_format_for(SchemaLM(), signature)
    assert first == second
    assert first is not second
    schema: dict[str, Any] = first["json_schema"]["schema"]
    assert schema["required"] == ["answer", "reasons"]
    schema["properties"].clear()  # a caller changing its copy
    third = response_format_for(SchemaLM(), signature)
    assert third == second
    assert third["json_schema"]["schema"]["properties"]["answer"]["type"] == "integer"


def test_an_lm_without_json_schema_gets_json_object() -> None:
    class PlainLM:
        supports_json_schema = False

    signature = ensure_signature("question -> answer")
    assert response_format_for(PlainLM(), signature) == {"type": "json_object"}
