"""XMLAdapter and TwoStepAdapter end to end against SimLM, in-process and served."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

import dspy_actors as dsa
from dspy_actors import _settings as settings
from dspy_actors.lm import LM
from dspy_actors.testing import SimLM, SimRequest
from tests.dspy_actors.library.conftest import StartApp

MakeLM = Callable[..., LM]


def _xml_responder(request: SimRequest) -> str:
    text = request.last_user_text
    question = re.search(r"<question>\n(.*?)\n</question>", text, re.S)
    assert question is not None, text
    return (
        "<reasoning>\nIt asks about a <tag> &amp; more.\n</reasoning>\n"
        f'<answer>\n{len(question.group(1))}\n</answer>\n<tags>\n["a", "b"]\n</tags>'
    )


def test_xml_adapter_formats_inputs_and_parses_typed_outputs(
    sim_lm: SimLM, make_lm: MakeLM
) -> None:
    sim_lm.respond_with(_xml_responder)
    settings.configure(lm=make_lm(), adapter=dsa.XMLAdapter())
    qa = dsa.ChainOfThought("question -> answer: int, tags: list[str]")
    qa.predict.demos = [dsa.Example(question="hi", reasoning="short", answer=2, tags=["x"])]
    pred = qa(question="What is four?")
    assert pred.answer == len("What is four?")
    assert pred.tags == ["a", "b"]
    assert pred.reasoning == "It asks about a <tag> & more."
    request = sim_lm.requests[-1]
    system = request.messages[0]["content"]
    assert "<question>\n{question}\n</question>" in system
    assert "<answer>\n{answer}" in system
    assert request.last_user_text.endswith(
        "Respond with the corresponding output fields wrapped in XML tags `<reasoning>`, then "
        "`<answer>` (must be formatted as a valid Python int), then `<tags>` (must be "
        "formatted as a valid Python list[str])."
    )
    demo_answer = request.messages[2]["content"]
    assert "<answer>\n2\n</answer>" in demo_answer


def test_xml_adapter_names_a_missing_element_after_its_json_fallback(
    sim_lm: SimLM, make_lm: MakeLM
) -> None:
    sim_lm.respond_with(lambda _r: "<reasoning>\nthinking\n</reasoning>")
    settings.configure(lm=make_lm(), adapter=dsa.XMLAdapter())
    with pytest.raises(dsa.AdapterParseError, match=r"XMLAdapter failed on field `answer`"):
        dsa.Predict("question -> answer")(question="q")
    assert len(sim_lm.requests) == 2  # XML, then the JSON fallback


def _two_step_responder(request: SimRequest) -> str:
    if request.model == "extractor":
        text = request.last_user_text
        assert (
            "Your job is to extract the fields from the text verbatim"
            in (request.messages[0]["content"])
        )
        number = re.search(r"the answer is (\d+)", text)
        assert number is not None, text
        return f"[[ ## answer ## ]]\n{number.group(1)}\n\n[[ ## completed ## ]]"
    assert request.messages[0]["content"].startswith(
        "You are a helpful assistant that can solve tasks based on user input."
    )
    assert request.last_user_text == "question: What is 6 x 7?"
    return "Let me think. Six sevens... the answer is 42, I am sure."


def test_two_step_adapter_asks_plainly_then_extracts_with_the_second_lm(
    sim_lm: SimLM, make_lm: MakeLM
) -> None:
    sim_lm.respond_with(_two_step_responder)
    extractor = make_lm(model="openai/extractor")
    settings.configure(lm=make_lm(model="openai/reasoner"), adapter=dsa.TwoStepAdapter(extractor))
    pred = dsa.Predict("question -> answer: int")(question="What is 6 x 7?")
    assert pred.answer == 42
    assert [r.model for r in sim_lm.requests] == ["reasoner", "extractor"]


def test_two_step_adapter_served_runs_both_calls_as_steps(
    sim_lm: SimLM, make_lm: MakeLM, start_app: StartApp
) -> None:
    sim_lm.respond_with(_two_step_responder)
    extractor = make_lm(model="openai/extractor")
    settings.configure(adapter=dsa.TwoStepAdapter(extractor))
    app = start_app(lm=make_lm(model="openai/reasoner"))
    qa = app.serve("qa", dsa.Predict("question -> answer: int"))
    assert qa.call(question="What is 6 x 7?").answer == 42


def test_two_step_adapter_needs_an_lm() -> None:
    with pytest.raises(TypeError, match="needs an LM"):
        dsa.TwoStepAdapter("openai/gpt-4o-mini")
