"""Predict and ChainOfThought end to end against SimLM, a real HTTP server on loopback."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable

import pytest
from pydantic import BaseModel

from dspy_actors import _settings as settings
from dspy_actors.adapters import ChatAdapter, JSONAdapter
from dspy_actors.lm import LM
from dspy_actors.modules import ChainOfThought, NoLMConfiguredError, Predict
from dspy_actors.primitives import Example, Module, Prediction
from dspy_actors.signatures import Image, InputField, OutputField, Signature
from dspy_actors.testing import SimLM, SimReply, SimRequest

JOIN_TIMEOUT = 20.0
MakeLM = Callable[..., LM]


def _field(text: str, name: str) -> str:
    """The value under ``[[ ## name ## ]]`` in a user message."""
    m = re.search(rf"\[\[ ## {name} ## \]\]\n(.*?)(?:\n\n|$)", text, re.S)
    assert m is not None, f"no {name} in {text!r}"
    return m.group(1)


def test_chain_of_thought_with_the_default_responder(sim_lm: SimLM, make_lm: MakeLM) -> None:
    settings.configure(lm=make_lm())
    qa = ChainOfThought("question -> answer: int")
    pred = qa(question="What is 2 + 2?")
    assert pred.answer == 4
    assert isinstance(pred.reasoning, str)
    assert (
        qa.predict.signature.instructions
        == "Given the fields `question`, produce the fields `answer`."
    )
    request = sim_lm.requests[-1]
    assert [m["role"] for m in request.messages] == ["system", "user"]
    assert request.last_user_text.endswith(
        "starting with the field `[[ ## reasoning ## ]]`, then `[[ ## answer ## ]]` (must be "
        "formatted as a valid Python int), and then ending with the marker for "
        "`[[ ## completed ## ]]`."
    )


class Product(Signature):
    """Multiply the two numbers."""

    a: int = InputField()
    b: int = InputField()
    product: int = OutputField()
    factors: list[int] = OutputField()
    even: bool = OutputField()


def test_prompt_round_trip_and_typed_parsing(sim_lm: SimLM, make_lm: MakeLM) -> None:
    adapter = ChatAdapter()

    def responder(req: SimRequest) -> str:
        # Answer from what the prompt says, in the adapter's own format.
        a, b = int(_field(req.last_user_text, "a")), int(_field(req.last_user_text, "b"))
        return (
            f"[[ ## product ## ]]\n{a * b}\n\n[[ ## factors ## ]]\n[{a}, {b}]\n\n"
            f"[[ ## even ## ]]\n{'yes' if (a * b) % 2 == 0 else 'no'}\n\n[[ ## completed ## ]]"
        )

    sim_lm.respond_with(responder)
    pred = Predict(Product)(a=6, b=7, lm=make_lm())
    assert (pred.product, pred.factors, pred.even) == (42, [6, 7], True)
    # What the server received is exactly what the adapter formats.
    assert sim_lm.requests[-1].messages == adapter.format(Product, [], {"a": 6, "b": 7})


def test_demos_are_sent_as_message_pairs(sim_lm: SimLM, make_lm: MakeLM) -> None:
    predict = Predict("question -> answer", temperature=0.0)
    predict.demos = [
        Example(question="Capital of France?", answer="Paris"),
        Example(question="Capital of Peru?"),  # no output: skipped
    ]
    pred = predict(question="Capital of Japan?", lm=make_lm())
    assert pred.answer == "simulated answer"
    req = sim_lm.requests[-1]
    assert [m["role"] for m in req.messages] == ["system", "user", "assistant", "user"]
    assert req.messages[1]["content"] == "[[ ## question ## ]]\nCapital of France?"
    assert req.messages[2]["content"] == "[[ ## answer ## ]]\nParis\n\n[[ ## completed ## ]]"
    assert req.body["temperature"] == 0.0


def test_n_completions(sim_lm: SimLM, make_lm: MakeLM) -> None:
    sim_lm.respond_with(
        lambda req: SimReply(
            [f"[[ ## answer ## ]]\n{i}\n\n[[ ## completed ## ]]" for i in range(req.n)]
        )
    )
    predict = Predict("question -> answer: int", n=2)
    pred = predict(question="pick", lm=make_lm(), config={"n": 3})
    assert sim_lm.requests[-1].body["n"] == 3
    assert pred.answer == 0
    assert pred.completions.answer == [0, 1, 2]
    assert len(pred.completions) == 3


def test_json_adapter_configured_with_a_model_output(sim_lm: SimLM, make_lm: MakeLM) -> None:
    class Person(BaseModel):
        name: str
        age: int

    settings.configure(lm=make_lm(), adapter=JSONAdapter())
    pred = Predict(Signature("text -> person: Person", custom_types={"Person": Person}))(
        text="Ann, 30"
    )
    assert isinstance(pred.person, Person)
    fmt = sim_lm.requests[-1].body["response_format"]
    assert fmt["type"] == "json_schema"
    person_schema = fmt["json_schema"]["schema"]["properties"]["person"]
    assert person_schema["required"] == ["name", "age"]
    assert person_schema["additionalProperties"] is False


def test_image_inputs_reach_the_server_as_content_parts(sim_lm: SimLM, make_lm: MakeLM) -> None:
    pic = Image.from_bytes(b"\x89PNG-not-really", mime_type="image/png")
    pred = Predict("photo: Image -> caption")(photo=pic, lm=make_lm())
    assert pred.caption
    content = sim_lm.requests[-1].messages[-1]["content"]
    assert {"type": "image_url", "image_url": {"url": pic.url}} in content


def test_no_lm_is_a_clear_error_and_missing_inputs_warn(
    make_lm: MakeLM, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(NoLMConfiguredError, match=r"dspy_actors.configure\(lm="):
        Predict("question -> answer")(question="hi")
    # As in DSPy: a missing input is a warning, and the LM is still called.
    pred = Predict("question, context -> answer")(question="hi", lm=make_lm())
    assert pred.answer
    assert "Missing: ['context']" in caplog.text


def test_per_call_lm_and_context_overrides_in_two_threads(sim_lm: SimLM, make_lm: MakeLM) -> None:
    sim_lm.respond_with(lambda req: f"[[ ## answer ## ]]\n{req.model}\n\n[[ ## completed ## ]]")
    lm_a, lm_b, lm_c = (
        make_lm("openai/model-a"),
        make_lm("openai/model-b"),
        make_lm("openai/model-c"),
    )
    settings.configure(lm=lm_c)
    predict = Predict("question -> answer")
    barrier = threading.Barrier(2, timeout=JOIN_TIMEOUT)
    seen: dict[str, list[str]] = {"a": [], "b": []}
    errors: list[BaseException] = []

    def run(key: str, lm: object) -> None:
        try:
            with settings.context(lm=lm):
                for i in range(10):
                    barrier.wait()  # both threads inside their context at once
                    seen[key].append(predict(question=f"{key}{i}").answer)
                # A per-call lm beats the context.
                seen[key].append(predict(question="x", lm=lm_c).answer)
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=run, args=("a", lm_a)),
        threading.Thread(target=run, args=("b", lm_b)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(JOIN_TIMEOUT)
    assert not errors
    assert seen["a"] == ["model-a"] * 10 + ["model-c"]
    assert seen["b"] == ["model-b"] * 10 + ["model-c"]
    assert predict(question="main").answer == "model-c"  # main thread: configured default


class TwoStep(Module):
    def __init__(self) -> None:
        self.first = Predict("question -> answer")
        self.second = ChainOfThought("question -> answer")

    def forward(self, question: str) -> Prediction:
        self.first(question=question)
        return self.second(question=question)  # type: ignore[no-any-return]


def test_usage_per_module_is_exact_under_threads(sim_lm: SimLM, make_lm: MakeLM) -> None:
    lm = make_lm()
    settings.configure(lm=lm)
    program = TwoStep()
    solo = Predict("question -> answer")
    before = lm.usage
    threads = [
        threading.Thread(target=lambda i=i: (program(question=f"q{i}"), solo(question=f"s{i}")))
        for i in range(16)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(JOIN_TIMEOUT)
    assert program.first.usage.calls == 16
    assert program.second.usage.calls == 16
    assert program.second.predict.usage == program.second.usage
    assert program.usage.calls == 32
    assert program.usage == program.first.usage + program.second.usage
    assert solo.usage.calls == 16
    total = program.usage + solo.usage
    spent = lm.usage
    assert total.calls == spent.calls - before.calls == 48
    assert total.prompt_tokens == spent.prompt_tokens - before.prompt_tokens > 0
    assert total.completion_tokens == spent.completion_tokens - before.completion_tokens > 0
