"""JSONAdapter: prompt format, response_format per provider, and JSON parsing."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import pytest
from pydantic import BaseModel

from dspy_actors.adapters import AdapterParseError, JSONAdapter
from dspy_actors.lm._lm import LM
from dspy_actors.primitives import Example
from dspy_actors.signatures import Signature


class Item(BaseModel):
    name: str
    qty: int


SIG = Signature(
    "question -> reasoning, answer: int, items: list[Item]", custom_types={"Item": Item}
)


@pytest.fixture
def lms() -> Iterator[tuple[LM, LM]]:
    openai = LM("openai/gpt-4o-mini", api_base="http://127.0.0.1:9/v1", api_key="k")
    anthropic = LM("anthropic/claude-x", api_base="http://127.0.0.1:9", api_key="k")
    yield openai, anthropic
    openai.close()
    anthropic.close()


def test_format_asks_for_a_json_object() -> None:
    messages = JSONAdapter().format(
        SIG, [Example(question="1+1?", reasoning="r", answer=2, items=[])], {"question": "2+2?"}
    )
    system = messages[0]["content"]
    assert "Inputs will have the following structure:\n\n[[ ## question ## ]]\n{question}" in system
    assert "Outputs will be a JSON object with the following fields." in system
    assert (
        '"answer": "{answer}        # note: the value you produce must be a single int value"'
        in system
    )
    assert messages[2] == {
        "role": "assistant",
        "content": '{\n  "reasoning": "r",\n  "answer": 2,\n  "items": []\n}',
    }
    final = messages[-1]["content"]
    assert final.startswith("[[ ## question ## ]]\n2+2?\n\n")
    assert final.endswith(
        "Respond with a JSON object in the following order of fields: `reasoning`, then `answer` "
        "(must be formatted as a valid Python int), then `items` (must be formatted as a valid "
        "Python list[Item], adhering to the JSON schema: "
        + final.split("adhering to the JSON schema: ", 1)[1]
    )


def test_response_format_json_schema_where_supported(lms: tuple[LM, LM]) -> None:
    openai, anthropic = lms
    fmt = JSONAdapter().response_format(openai, SIG)
    assert fmt is not None
    assert fmt["type"] == "json_schema"
    spec = fmt["json_schema"]
    assert spec["name"] == "StringSignature"
    assert spec["strict"] is True
    schema = spec["schema"]
    assert schema["required"] == ["reasoning", "answer", "items"]
    assert schema["additionalProperties"] is False
    assert schema["properties"]["answer"] == {"type": "integer"}
    assert schema["properties"]["items"]["items"] == {"$ref": "#/$defs/Item"}
    assert schema["$defs"]["Item"]["additionalProperties"] is False
    assert JSONAdapter().response_format(anthropic, SIG) == {"type": "json_object"}


def test_free_form_dicts_are_not_strict(lms: tuple[LM, LM]) -> None:
    fmt = JSONAdapter().response_format(lms[0], Signature("q -> counts: dict[str, int]"))
    assert fmt is not None
    assert fmt["json_schema"]["strict"] is False


def test_parse_json_object_leniently() -> None:
    raw = (
        'Sure! ```json\n{"reasoning": "r", "answer": "4", "items": [{"name": "a", "qty": 2}]}\n```'
    )
    parsed = JSONAdapter().parse(SIG, raw)
    assert parsed == {"reasoning": "r", "answer": 4, "items": [Item(name="a", qty=2)]}
    mood = Signature("q -> mood: Literal['happy', 'sad'], note: str")
    assert JSONAdapter().parse(mood, '{"mood": "HAPPY", "note": {"k": 1}}') == {
        "mood": "happy",
        "note": '{"k": 1}',
    }
    assert Literal  # keep the import meaningful for readers of the signature above


def test_parse_errors_name_field_type_and_completion() -> None:
    with pytest.raises(AdapterParseError, match="not a JSON object") as info:
        JSONAdapter().parse(SIG, "no json here")
    assert info.value.field == "reasoning"
    with pytest.raises(AdapterParseError, match="no key 'items'") as info:
        JSONAdapter().parse(SIG, '{"reasoning": "r", "answer": 1}')
    assert (info.value.field, info.value.expected_type) == ("items", list[Item])
    raw = '{"reasoning": "r", "answer": "many", "items": []}'
    with pytest.raises(AdapterParseError) as info:
        JSONAdapter().parse(SIG, raw)
    assert info.value.field == "answer"
    assert info.value.raw_completion == raw
    assert "JSONAdapter: cannot parse field `answer` (expected int)" in str(info.value)
