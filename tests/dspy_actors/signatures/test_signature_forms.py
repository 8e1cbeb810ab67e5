"""Signatures: class form, string form (safe parsing, caret errors) and editing."""

from __future__ import annotations

from typing import Literal, Optional

import pytest
from pydantic import BaseModel

from dspy_actors.signatures import (
    History,
    Image,
    InputField,
    OutputField,
    Signature,
    SignatureSyntaxError,
    make_signature,
)


class Answer(BaseModel):
    value: int
    unit: str


class QA(Signature):
    """Answer the question with a number."""

    question: str = InputField(desc="an arithmetic question")
    context: list[str] = InputField(prefix="Facts:")
    answer: int = OutputField(desc="the number")


def test_class_form_collects_fields_types_and_instructions() -> None:
    assert list(QA.input_fields) == ["question", "context"]
    assert list(QA.output_fields) == ["answer"]
    assert QA.instructions == "Answer the question with a number."
    assert QA.fields["question"].desc == "an arithmetic question"
    assert QA.fields["question"].prefix == "Question:"
    assert QA.fields["context"].prefix == "Facts:"
    assert QA.fields["context"].annotation == list[str]
    assert QA.fields["answer"].annotation is int
    assert QA.signature == "question, context -> answer"
    assert repr(QA) == "QA(question, context: list[str] -> answer: int)"


def test_class_form_resolves_future_annotations_defined_locally() -> None:
    class Local(BaseModel):
        x: int

    class Sig(Signature):
        item: Local = InputField()
        verdict: Literal["yes", "no"] = OutputField()
        maybe: Optional[int] = OutputField()  # noqa: UP045 - the typing spelling must work too

    assert Sig.fields["item"].annotation is Local
    assert Sig.fields["verdict"].annotation == Literal["yes", "no"]
    assert Sig.fields["maybe"].annotation == Optional[int]  # noqa: UP045


def test_class_form_requires_field_declarations() -> None:
    with pytest.raises(TypeError, match=r"field 'question' of signature Bad must be declared"):

        class Bad(Signature):
            question: str = "oops"


def test_default_instructions_name_the_fields() -> None:
    sig = Signature("question, context -> answer")
    assert (
        sig.instructions == "Given the fields `question`, `context`, produce the fields `answer`."
    )


def test_class_inheritance_adds_fields() -> None:
    class WithReason(QA):
        reason: str = OutputField()

    assert list(WithReason.fields) == ["question", "context", "answer", "reason"]


def test_string_form_types() -> None:
    sig = Signature(
        "context: list[str], question, n: Optional[int], kind: Literal['a', \"b\", 3, True] "
        "-> answer: int, scores: dict[str, list[float]], pic: Image, h: History | None"
    )
    f = sig.fields
    assert f["context"].annotation == list[str]
    assert f["question"].annotation is str
    assert f["n"].annotation == Optional[int]  # noqa: UP045
    assert f["kind"].annotation == Literal["a", "b", 3, True]
    assert f["answer"].annotation is int
    assert f["scores"].annotation == dict[str, list[float]]
    assert f["pic"].annotation is Image
    assert f["h"].annotation == Optional[History]  # noqa: UP045
    assert sig.__name__ == "StringSignature"


def test_string_form_custom_types_and_instructions() -> None:
    sig = Signature("q -> a: Answer", "Be terse.", custom_types={"Answer": Answer})
    assert sig.fields["a"].annotation is Answer
    assert sig.instructions == "Be terse."


@pytest.mark.parametrize(
    ("text", "column", "problem"),
    [
        ("question answer", 16, "expected '->'"),
        ("question -> ", 13, "at least one output field"),
        ("a b -> c", 3, "expected ',' or '->'"),
        ("a: list[str -> b", 13, "to close the '[' at column 8"),
        ("a: Foo -> b", 4, "unknown type 'Foo'"),
        ("a, -> b", 4, "expected a field name after ','"),
        ("a -> b -> c", 8, "more than one '->'"),
        ("a: Literal[x] -> b", 12, "Literal values must be"),
        ("a: Literal['x -> b", 12, "unterminated string"),
        ("a, a -> b", 4, "duplicate field name 'a'"),
        ("class -> b", 1, "Python keyword"),
        ("a: __import__('os') -> b", 4, "unknown type '__import__'"),
        ("a: __import__ -> b", 4, "unknown type '__import__'"),
        ("a; b -> c", 2, "unexpected character ';'"),
    ],
)
def test_malformed_string_quotes_it_and_points_at_the_problem(
    text: str, column: int, problem: str
) -> None:
    with pytest.raises(SignatureSyntaxError) as info:
        Signature(text)
    err = info.value
    message = str(err)
    assert problem in message
    assert err.column == column
    assert f'"{text}"' in message
    quoted, caret = message.splitlines()[1:3]
    # The caret sits under the offending character of the quoted string.
    assert caret.index("^") == quoted.index('"') + column


def test_string_form_never_evaluates_code(tmp_path: object) -> None:
    with pytest.raises(SignatureSyntaxError):
        Signature("a: list[exec] -> b")
    with pytest.raises(SignatureSyntaxError):
        Signature("a: os.system -> b")


def test_editing_returns_new_signatures() -> None:
    sig = Signature("question -> answer: int")
    with_ctx = sig.prepend("context", InputField(desc="facts"), list[str])
    assert list(with_ctx.input_fields) == ["context", "question"]
    assert with_ctx.fields["context"].annotation == list[str]
    with_reason = sig.prepend("reasoning", OutputField())
    assert list(with_reason.output_fields) == ["reasoning", "answer"]
    appended = sig.append("confidence", OutputField(), float)
    assert list(appended.output_fields) == ["answer", "confidence"]
    deleted = appended.delete("answer")
    assert list(deleted.output_fields) == ["confidence"]
    instructed = sig.with_instructions("Think hard.")
    assert instructed.instructions == "Think hard."
    updated = sig.with_updated_fields("answer", float, desc="a float now")
    assert updated.fields["answer"].annotation is float
    assert updated.fields["answer"].desc == "a float now"
    # The original is untouched.
    assert list(sig.fields) == ["question", "answer"]
    assert sig.fields["answer"].annotation is int
    assert sig.equals(Signature("question -> answer: int"))
    assert not sig.equals(updated)


def test_editing_errors() -> None:
    sig = Signature("question -> answer")
    with pytest.raises(ValueError, match="already has a field 'answer'"):
        sig.append("answer", OutputField())
    with pytest.raises(KeyError, match="no field 'nope'"):
        sig.delete("nope")
    with pytest.raises(TypeError, match="InputField"):
        sig.append("x", "not a field")


def test_signature_classes_are_not_instantiated() -> None:
    with pytest.raises(TypeError, match="is a signature class"):
        QA()  # type: ignore[call-arg]


def test_make_signature_from_mapping() -> None:
    sig = make_signature(
        {"q": (str, InputField()), "a": (Answer, OutputField(desc="structured"))}, "Do it."
    )
    assert sig.fields["a"].annotation is Answer
    assert sig.instructions == "Do it."
