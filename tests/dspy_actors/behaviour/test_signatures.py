"""DSPy's signature behaviour: type names from the caller's scope, ``dspy.X`` names,
``tuple[int, ...]``, parenthesised unions, field order, untyped dict signatures, instruction
and state helpers, per-field format=, and the input warnings of a call."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Optional, Union

import pytest
from pydantic import BaseModel

from dspy_actors import _settings as settings
from dspy_actors.adapters import ChatAdapter
from dspy_actors.lm import LM
from dspy_actors.modules import Predict
from dspy_actors.signatures import Image, InputField, OutputField, Signature
from dspy_actors.testing import SimLM

MakeLM = Callable[..., LM]


class Address(BaseModel):
    city: str


def test_string_signatures_name_types_from_the_callers_scope() -> None:
    class Local(BaseModel):  # defined in this function: found in the caller's locals
        x: int

    sig = Signature("address: Address, extra: Local -> city")
    assert sig.input_fields["address"].annotation is Address
    assert sig.input_fields["extra"].annotation is Local
    assert Predict("a: list[Address] -> b").signature.input_fields["a"].annotation == list[Address]


def test_dotted_names_resolve_through_the_callers_scope_and_our_package() -> None:
    import pydantic

    import dspy_actors as dspy  # a ported program writes dspy.Image

    sig = Signature("photo: dspy.Image, where: pydantic.BaseModel -> caption")
    assert sig.input_fields["photo"].annotation is Image
    assert sig.input_fields["where"].annotation is pydantic.BaseModel
    sig2 = Signature("photo: dsa.Image -> caption")  # our alias even when not imported
    assert sig2.input_fields["photo"].annotation is Image
    assert dspy is not None


def test_names_that_are_not_types_are_refused() -> None:
    helper = len  # a function in scope is not a type
    with pytest.raises(ValueError, match="unknown type 'helper'"):
        Signature("a: helper -> b")
    assert helper


def test_variadic_tuples_and_parenthesised_unions() -> None:
    sig = Signature("xs: tuple[int, ...] -> y: str | (int | float) | None")
    assert sig.input_fields["xs"].annotation == tuple[int, ...]
    assert sig.output_fields["y"].annotation == Optional[Union[str, int, float]]  # noqa: UP007, UP045
    with pytest.raises(ValueError, match="expected '\\)' to close"):
        Signature("a: (int | str -> b")


def test_class_fields_keep_their_declared_order_typed_or_not() -> None:
    class Mixed(Signature):
        first: str = InputField()
        second = InputField()
        third: int = InputField()
        out = OutputField()

    assert list(Mixed.fields) == ["first", "second", "third", "out"]
    assert Mixed.input_fields["second"].annotation is str


def test_dict_signatures_without_types() -> None:
    sig = Signature({"question": InputField(desc="q"), "answer": OutputField()})
    assert list(sig.input_fields) == ["question"]
    assert sig.input_fields["question"].annotation is str
    assert sig.input_fields["question"].desc == "q"
    with pytest.raises(TypeError, match="field 'answer': expected InputField"):
        Signature({"question": InputField(), "answer": 3})


def test_append_instructions_and_state_round_trip() -> None:
    base = Signature("question -> answer", "Translate to French.")
    more = base.append_instructions("Keep it short.")
    assert more is not base
    assert more.instructions == "Translate to French.\n\nKeep it short."
    assert base.instructions == "Translate to French."
    edited = more.with_updated_fields("answer", desc="in French", prefix="Réponse:")
    state = edited.dump_state()
    assert state == {
        "instructions": "Translate to French.\n\nKeep it short.",
        "fields": [
            {"prefix": "Question:", "description": ""},
            {"prefix": "Réponse:", "description": "in French"},
        ],
    }
    restored = base.load_state(state)
    assert restored.instructions == more.instructions
    assert restored.output_fields["answer"].desc == "in French"
    with pytest.raises(ValueError, match="has 1 fields; StringSignature has 2"):
        base.load_state({"fields": [{"prefix": "x", "description": ""}]})


def test_unknown_field_arguments_are_named() -> None:
    with pytest.raises(TypeError, match=r"unknown argument\(s\) \['colour'\]"):
        OutputField(colour="red")
    with pytest.raises(TypeError, match="not both"):
        OutputField(default=[], default_factory=list)


def test_per_field_format_renders_the_input(sim_lm: SimLM, make_lm: MakeLM) -> None:
    class Sum(Signature):
        numbers: list[int] = InputField(format=lambda xs: " + ".join(map(str, xs)))
        total: int = OutputField()

    text = ChatAdapter().format(Sum, [], {"numbers": [1, 2, 3]})[-1]["content"]
    assert "[[ ## numbers ## ]]\n1 + 2 + 3" in text
    sim_lm.respond_with(lambda req: "[[ ## total ## ]]\n6\n\n[[ ## completed ## ]]")
    assert Predict(Sum)(numbers=[1, 2, 3], lm=make_lm()).total == 6
    assert "1 + 2 + 3" in sim_lm.requests[-1].last_user_text


def test_input_default_factory_fills_a_missing_input(sim_lm: SimLM, make_lm: MakeLM) -> None:
    class Tagged(Signature):
        text: str = InputField()
        tags: list[str] = InputField(default_factory=lambda: ["none"])
        label: str = OutputField()

    Predict(Tagged)(text="hello", lm=make_lm())
    assert "[[ ## tags ## ]]\n[1] «none»" in sim_lm.requests[-1].last_user_text


def test_calls_warn_on_type_mismatch_and_unknown_inputs_and_still_call(
    sim_lm: SimLM, make_lm: MakeLM, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="dspy_actors.predict")
    predict = Predict("count: int, note -> answer")
    pred = predict(count="three", note=5, colour="red", lm=make_lm())
    assert pred.answer
    assert "Type mismatch for input field 'count': the signature declares int" in caplog.text
    assert "'note'" not in caplog.text.split("Type mismatch")[-1]  # untyped: not checked
    assert "they are ignored: ['colour']" in caplog.text
    caplog.clear()
    predict(count=3, note="x", lm=make_lm())
    assert caplog.text == ""
    settings.configure(warn_on_type_mismatch=False)
    predict(count="three", note="x", lm=make_lm())
    assert "Type mismatch" not in caplog.text
    assert len(sim_lm.requests) == 3
