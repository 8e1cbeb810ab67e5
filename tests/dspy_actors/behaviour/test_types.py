"""DSPy's types: Code, Reasoning, Document and Citations, end to end against SimLM."""

from __future__ import annotations

from collections.abc import Callable

import pytest

import dspy_actors as dsa
from dspy_actors.adapters import ChatAdapter, JSONAdapter
from dspy_actors.lm import LM
from dspy_actors.signatures import (
    Citations,
    Code,
    Document,
    InputField,
    OutputField,
    Reasoning,
    Signature,
)
from dspy_actors.testing import SimLM

MakeLM = Callable[..., LM]


# With ``from __future__ import annotations``, typing would read "java" in an annotation
# as a forward reference: name the parametrised type first.
JavaCode = Code["java"]


class Generate(Signature):
    """Write the function."""

    task: str = InputField()
    code: JavaCode = OutputField()


def test_code_outputs_are_asked_for_fenced_and_parsed_without_the_fence(
    sim_lm: SimLM, make_lm: MakeLM
) -> None:
    system = ChatAdapter().format(Generate, [], {"task": "x"})[0]["content"]
    assert "```java\n{code}\n```" in system
    assert "Programming language: java" in system
    assert "JSON schema" not in system
    sim_lm.respond_with(
        lambda req: "[[ ## code ## ]]\n```java\nint f() { return 1; }\n```\n\n[[ ## completed ## ]]"
    )
    pred = dsa.Predict(Generate)(task="return one", lm=make_lm())
    assert isinstance(pred.code, Code)
    assert pred.code.code == "int f() { return 1; }"
    assert type(pred.code).language == "java"


def test_code_inputs_are_shown_as_code_and_string_signatures_name_code() -> None:
    sig = Signature('snippet: Code, lang_code: dspy.Code["rust"] -> complexity')
    assert sig.input_fields["snippet"].annotation is Code
    assert sig.input_fields["lang_code"].annotation.language == "rust"
    text = ChatAdapter().format(sig, [], {"snippet": Code(code="def f(): pass")})[-1]["content"]
    assert "[[ ## snippet ## ]]\ndef f(): pass" in text
    assert Code(code="```python\nx = 1\n```").code == "x = 1"
    assert Code(code="```x = 2```").code == "x = 2"
    assert JSONAdapter().parse(Generate, '{"code": "```java\\nA\\n```"}')["code"].code == "A"


def test_reasoning_is_a_string_like_output(sim_lm: SimLM, make_lm: MakeLM) -> None:
    sim_lm.respond_with(
        lambda req: (
            "[[ ## reasoning ## ]]\nTwo and two make four.\n\n"
            "[[ ## answer ## ]]\n4\n\n[[ ## completed ## ]]"
        )
    )
    pred = dsa.Predict("question -> reasoning: dspy.Reasoning, answer: int")(
        question="2 + 2?", lm=make_lm()
    )
    assert isinstance(pred.reasoning, Reasoning)
    assert pred.reasoning == "Two and two make four."
    assert str(pred.reasoning) == "Two and two make four."
    assert "four" in pred.reasoning
    assert pred.reasoning.upper() == "TWO AND TWO MAKE FOUR."
    assert pred.answer == 4
    system = sim_lm.requests[-1].messages[0]["content"]
    assert "`reasoning` (Reasoning)" in system
    assert "JSON schema" not in system.split("[[ ## answer ## ]]")[0].split("{reasoning}")[-1]


def test_documents_in_and_citations_out(sim_lm: SimLM, make_lm: MakeLM) -> None:
    class Cite(Signature):
        documents: list[Document] = InputField()
        question: str = InputField()
        answer: str = OutputField()
        citations: Citations = OutputField()

    docs = [
        Document(data="Water boils at 100 C.", title="Physics"),
        Document(data="The sky is blue."),
    ]
    sim_lm.respond_with(
        lambda req: (
            "[[ ## answer ## ]]\n100 C\n\n[[ ## citations ## ]]\n"
            '[{"cited_text": "Water boils at 100 C.", "document_index": 0, '
            '"start_char_index": 0, "end_char_index": 21}]\n\n[[ ## completed ## ]]'
        )
    )
    pred = dsa.Predict(Cite)(documents=docs, question="Boiling point?", lm=make_lm())
    assert isinstance(pred.citations, Citations)
    assert len(pred.citations) == 1
    assert pred.citations[0].cited_text == "Water boils at 100 C."
    assert [c.document_index for c in pred.citations] == [0]
    text = sim_lm.requests[-1].last_user_text
    assert "Title: Physics" in text
    assert "The sky is blue." in text
    built = Citations.from_dict_list(
        [{"cited_text": "x", "document_index": 1, "start_char_index": 0, "end_char_index": 1}]
    )
    assert isinstance(built[0], Citations.Citation)  # type: ignore[attr-defined]
    assert str(docs[0]) == "Document('Physics': 21 chars)"
    with pytest.raises(ValueError, match="Code takes a string"):
        Code(code=3)
