"""FieldSplitter: an answer's text split into its fields however the deltas are cut."""

from __future__ import annotations

import pytest

from dspy_actors.streaming._fields import FieldSplitter


def split(text: str, fields: list[str] | None, step: int) -> tuple[dict[str, str], list[str]]:
    splitter = FieldSplitter(fields)
    pieces = []
    for i in range(0, len(text), step):
        pieces += splitter.feed(text[i : i + step])
    pieces += splitter.close()
    got: dict[str, str] = {}
    ended = []
    for field, text_piece, last in pieces:
        assert "[[ ##" not in text_piece  # never a marker, or a piece of one
        got[field] = got.get(field, "") + text_piece
        if last:
            ended.append(field)
    return got, ended


CHAT = (
    "[[ ## reasoning ## ]]\nThink [a] hard.\n\n[[ ## answer ## ]]\nParis [[x]] is it\n\n"
    "[[ ## completed ## ]]\n"
)
JSON = (
    '```json\n{\n  "reasoning": "a \\"q\\" \\u00e9\\n x \\ud83d\\ude00",\n  "answer": 42 ,\n'
    ' "tags": ["a, b", {"c": 1}]}\n```'
)


@pytest.mark.parametrize("step", range(1, 24))
def test_chat_adapter_markers(step: int) -> None:
    got, ended = split(CHAT, ["reasoning", "answer"], step)
    assert got == {"reasoning": "Think [a] hard.", "answer": "Paris [[x]] is it"}
    assert ended == ["reasoning", "answer"]


@pytest.mark.parametrize("step", range(1, 24))
def test_json_adapter_object(step: int) -> None:
    got, ended = split(JSON, None, step)
    assert got == {
        "reasoning": 'a "q" é\n x \U0001f600',
        "answer": "42",
        "tags": '["a, b", {"c": 1}]',
    }
    assert ended == ["reasoning", "answer", "tags"]


def test_fields_not_asked_for_are_dropped() -> None:
    got, _ = split(CHAT, ["answer"], 5)
    assert got == {"answer": "Paris [[x]] is it"}
