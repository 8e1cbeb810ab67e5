"""ChatAdapter: the exact prompt format and marker parsing (no LM involved)."""

from __future__ import annotations

from typing import Any, Literal, Optional

import pytest
from pydantic import BaseModel

from dspy_actors.adapters import AdapterParseError, ChatAdapter
from dspy_actors.primitives import Example
from dspy_actors.signatures import History, Image, InputField, OutputField, Signature


class QA(Signature):
    """Answer the question."""

    question: str = InputField(desc="a question")
    reasoning: str = OutputField()
    answer: int = OutputField(desc="a number")


SYSTEM = """Your input fields are:
1. `question` (str): a question
Your output fields are:
1. `reasoning` (str)
2. `answer` (int): a number
All interactions will be structured in the following way, with the appropriate values filled in.

[[ ## question ## ]]
{question}

[[ ## reasoning ## ]]
{reasoning}

[[ ## answer ## ]]
{answer}        # note: the value you produce must be a single int value

[[ ## completed ## ]]
In adhering to this structure, your objective is:
        Answer the question."""

FINAL = (
    "[[ ## question ## ]]\nWhat is 2 + 2?\n\n"
    "Respond with the corresponding output fields, starting with the field "
    "`[[ ## reasoning ## ]]`, then `[[ ## answer ## ]]` (must be formatted as a valid Python "
    "int), and then ending with the marker for `[[ ## completed ## ]]`."
)


def test_system_and_final_user_message() -> None:
    messages = ChatAdapter().format(QA, [], {"question": "What is 2 + 2?"})
    assert messages == [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": FINAL},
    ]


def test_single_str_output_instruction_has_no_type_hint() -> None:
    messages = ChatAdapter().format(Signature("q -> a"), [], {"q": "x"})
    assert messages[-1]["content"].endswith(
        "Respond with the corresponding output fields, starting with the field "
        "`[[ ## a ## ]]`, and then ending with the marker for `[[ ## completed ## ]]`."
    )


def test_demos_are_user_assistant_pairs_and_partial_demos_are_marked() -> None:
    demos: list[Example | dict[str, Any]] = [
        Example(question="1+1?", reasoning="one and one", answer=2),
        {"question": "3+3?", "answer": 6},  # partial: no reasoning
        Example(question="no outputs at all"),  # skipped
    ]
    messages = ChatAdapter().format(QA, demos, {"question": "What is 2 + 2?"})
    roles = [m["role"] for m in messages]
    assert roles == ["system", "user", "assistant", "user", "assistant", "user"]
    # Partial demos come first, marked as such, with the missing field "not supplied".
    assert messages[1]["content"] == (
        "This is an example of the task, though some input or output fields are not supplied."
        "\n\n[[ ## question ## ]]\n3+3?"
    )
    assert messages[2]["content"] == (
        "[[ ## reasoning ## ]]\nNot supplied for this particular example.\n\n"
        "[[ ## answer ## ]]\n6\n\n[[ ## completed ## ]]"
    )
    assert messages[3]["content"] == "[[ ## question ## ]]\n1+1?"
    assert messages[4]["content"] == (
        "[[ ## reasoning ## ]]\none and one\n\n[[ ## answer ## ]]\n2\n\n[[ ## completed ## ]]"
    )


def test_history_becomes_prior_turns() -> None:
    sig = Signature("question, history: History -> answer")
    history = History(
        messages=[{"question": "Hi?", "answer": "Hello."}, {"question": "Name?", "answer": "Sim."}]
    )
    messages = ChatAdapter().format(sig, [], {"question": "Age?", "history": history})
    assert "`history` (History)" not in messages[0]["content"]  # not listed as a field
    assert "[[ ## history ## ]]" not in str(messages)
    assert [m["role"] for m in messages] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
    ]
    assert messages[1]["content"] == "[[ ## question ## ]]\nHi?"
    assert messages[2]["content"] == "[[ ## answer ## ]]\nHello.\n\n[[ ## completed ## ]]"
    assert messages[4]["content"] == "[[ ## answer ## ]]\nSim.\n\n[[ ## completed ## ]]"
    assert messages[5]["content"].startswith("[[ ## question ## ]]\nAge?")


def test_images_become_content_parts() -> None:
    sig = Signature("photo: Image, question -> caption")
    img = Image.from_url("https://x.test/cat.png")
    content = ChatAdapter().format(sig, [], {"photo": img, "question": "What?"})[-1]["content"]
    assert isinstance(content, list)
    assert content[0] == {"type": "text", "text": "[[ ## photo ## ]]\n"}
    assert content[1] == {"type": "image_url", "image_url": {"url": "https://x.test/cat.png"}}
    assert content[2]["type"] == "text"
    assert content[2]["text"].startswith("\n\n[[ ## question ## ]]\nWhat?\n\nRespond with")


def test_input_values_render_as_text_lists_and_json() -> None:
    class Doc(BaseModel):
        title: str

    sig = Signature("context: list[str], doc: Doc, n: int -> a", custom_types={"Doc": Doc})
    text = ChatAdapter().format(sig, [], {"context": ["x", "y"], "doc": Doc(title="T"), "n": 3})
    user = text[-1]["content"]
    assert "[[ ## context ## ]]\n[1] «x»\n[2] «y»" in user
    assert '[[ ## doc ## ]]\n{\n  "title": "T"\n}' in user
    assert "[[ ## n ## ]]\n3" in user


def test_type_notes_for_literal_bool_and_models() -> None:
    class Point(BaseModel):
        x: int

    sig = Signature(
        "q -> ok: bool, mood: Literal['happy', 'sad'], p: Point, tags: list[str]",
        custom_types={"Point": Point},
    )
    messages = ChatAdapter().format(sig, [], {"q": "x"})
    system, final = messages[0]["content"], messages[-1]["content"]
    assert "{ok}        # note: the value you produce must be True or False" in system
    assert "must exactly match (no extra characters) one of: happy; sad" in system
    assert (
        '{p}        # note: the value you produce must adhere to the JSON schema: {"properties"'
        in system
    )
    assert "`[[ ## ok ## ]]` (must be formatted as a valid Python bool)" in final
    assert (
        "`[[ ## mood ## ]]` (must be formatted as a valid Python Literal['happy', 'sad'])" in final
    )
    assert (
        "`[[ ## p ## ]]` (must be formatted as a valid Python Point, adhering to the JSON schema: {"
        in final
    )
    assert "`[[ ## tags ## ]]` (must be formatted as a valid Python list[str])" in final


class Verdict(BaseModel):
    label: str
    score: float


class Typed(Signature):
    q: str = InputField()
    n: int = OutputField()
    x: float = OutputField()
    ok: bool = OutputField()
    tags: list[str] = OutputField()
    counts: dict[str, int] = OutputField()
    mood: Literal["happy", "sad"] = OutputField()
    maybe: Optional[int] = OutputField()  # noqa: UP045
    verdict: Verdict = OutputField()
    text: str = OutputField()


def test_parse_validates_each_field_into_its_type() -> None:
    completion = """Some preamble the model wrote.
[[ ## n ## ]]
4

[[ ## x ## ]]
 3.5

[[ ## ok ## ]]
True

[[ ## tags ## ]]
['a', "b"]

[[ ## counts ## ]]
```json
{"a": 1, "b": "2"}
```

[[ ## mood ## ]]
'Happy'

[[ ## maybe ## ]]
None

[[ ## verdict ## ]]
{"label": "good", "score": "0.9"}

[[ ## text ## ]]
  multi
line{TRAILING}

[[ ## completed ## ]]
""".replace("{TRAILING}", "  ")
    parsed = ChatAdapter().parse(Typed, completion)
    assert parsed == {
        "n": 4,
        "x": 3.5,
        "ok": True,
        "tags": ["a", "b"],
        "counts": {"a": 1, "b": 2},
        "mood": "happy",
        "maybe": None,
        "verdict": Verdict(label="good", score=0.9),
        "text": "multi\nline",
    }


def test_parse_errors_name_field_type_and_completion() -> None:
    sig = Signature("q -> reasoning, answer: int")
    bad = "[[ ## reasoning ## ]]\nhmm\n\n[[ ## answer ## ]]\nfour\n\n[[ ## completed ## ]]"
    with pytest.raises(AdapterParseError) as info:
        ChatAdapter().parse(sig, bad)
    err = info.value
    assert (err.field, err.expected_type, err.raw_completion) == ("answer", int, bad)
    assert "cannot parse field `answer` (expected int)" in str(err)
    assert bad in str(err)

    missing = "[[ ## reasoning ## ]]\nhmm"
    with pytest.raises(AdapterParseError, match=r"no `\[\[ ## answer ## \]\]` section") as info:
        ChatAdapter().parse(sig, missing)
    assert info.value.field == "answer"

    with pytest.raises(AdapterParseError, match=r"'maybe' is not one of \['happy', 'sad'\]"):
        ChatAdapter().parse(Signature("q -> m: Literal['happy', 'sad']"), "[[ ## m ## ]]\nmaybe")


def test_tools_and_audio_inputs() -> None:
    from dspy_actors.signatures import Audio, Tool

    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    sig = Signature("question, tools: list[Tool], clip: Audio -> answer")
    clip = Audio.from_bytes(b"RIFF", "wav")
    content = ChatAdapter().format(sig, [], {"question": "q", "tools": [Tool(add)], "clip": clip})[
        -1
    ]["content"]
    assert isinstance(content, list)
    assert "[[ ## tools ## ]]\nadd: Add two numbers. Arguments: " in content[0]["text"]
    assert content[1] == {
        "type": "input_audio",
        "input_audio": {"data": clip.data, "format": "wav"},
    }
