"""In-process dsa.streamify with StreamListener (DSPy's API), against SimLM."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import dspy_actors as dsa
from dspy_actors.lm import LM
from dspy_actors.streaming import StatusMessage, StatusMessageProvider, StreamResponse
from dspy_actors.testing.sim_lm import SimLM
from tests.streaming.test_handle_stream import chat_answer, texts


class TwoSteps(dsa.Module):
    def __init__(self) -> None:
        self.draft = dsa.ChainOfThought("question -> answer")
        self.polish = dsa.Predict("answer -> final")

    def forward(self, question: str) -> Any:
        return self.polish(answer=self.draft(question=question).answer)


@pytest.fixture
def lm(sim: SimLM) -> Iterator[LM]:
    made = LM("openai/sim-model", api_base=sim.openai_base, api_key="k", cache=False)
    yield made
    made.close()


def respond(req: Any) -> str:
    asked = re.search(r"q\d{4}", req.last_user_text)
    tag = asked.group(0) if asked else "?"
    if "`final`" in req.last_user_text or "## final ##" in req.last_user_text:
        return chat_answer(final=f"polished {tag} " + "x " * 50)
    return chat_answer(reasoning=f"thinking about {tag}", answer=f"{tag} " + "y " * 50)


def test_streamify_listens_to_fields_of_named_predictors(sim: SimLM, lm: LM) -> None:
    sim.respond_with(respond)
    program = TwoSteps()
    stream = dsa.streamify(
        program,
        stream_listeners=[
            dsa.streaming.StreamListener("reasoning"),
            dsa.streaming.StreamListener("final"),
        ],
        async_streaming=False,
    )
    with dsa.context(lm=lm):
        pieces = list(stream(question="q0001"))
    assert isinstance(pieces[-1], dsa.Prediction)
    got = texts(pieces)
    assert set(got) == {("draft.predict", "reasoning"), ("polish", "final")}
    assert got[("draft.predict", "reasoning")] == "thinking about q0001"
    assert got[("polish", "final")].startswith("polished")
    assert got[("polish", "final")].strip() == pieces[-1].final


def test_streamify_status_messages_and_async(sim: SimLM, lm: LM) -> None:
    sim.respond_with(respond)

    class Provider(StatusMessageProvider):
        def module_start_status_message(self, instance: Any, inputs: dict[str, Any]) -> str:
            return f"start {type(instance).__name__}"

    stream = dsa.streamify(TwoSteps(), status_message_provider=Provider())

    async def consume() -> list[Any]:
        with dsa.context(lm=lm):
            return [piece async for piece in stream(question="q0002")]

    pieces = asyncio.run(consume())
    status = [p.message for p in pieces if isinstance(p, StatusMessage)]
    assert status[0] == "start TwoSteps"
    assert "start Predict" in status
    assert isinstance(pieces[-1], dsa.Prediction)


def test_an_ambiguous_listener_is_a_clear_error() -> None:
    class Twice(dsa.Module):
        def __init__(self) -> None:
            self.a = dsa.Predict("q -> answer")
            self.b = dsa.Predict("q -> answer")

    with pytest.raises(ValueError, match=r"several predictors \(\['a', 'b'\]\)"):
        dsa.streamify(Twice(), stream_listeners=[dsa.streaming.StreamListener("answer")])


def test_one_streamified_program_serves_concurrent_streams(sim: SimLM, lm: LM) -> None:
    """DSPy issue 8173: concurrent streams through one listener must not mix."""
    sim.respond_with(respond)
    stream = dsa.streamify(
        TwoSteps(),
        stream_listeners=[dsa.streaming.StreamListener("answer")],
        async_streaming=False,
    )
    results: dict[int, str] = {}

    def run(i: int) -> None:
        with dsa.context(lm=lm):
            pieces = list(stream(question=f"q{i:04d}"))
        results[i] = texts(pieces)[("draft.predict", "answer")]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == list(range(12))
    for i, answer in results.items():
        assert answer.startswith(f"q{i:04d}")


def test_closing_a_streamify_stream_stops_its_program(sim: SimLM, lm: LM) -> None:
    sim.respond_with(lambda req: chat_answer(answer=" ".join(f"w{i}" for i in range(3000))))
    stream = dsa.streamify(dsa.Predict("question -> answer"), async_streaming=False, buffer=4)
    with dsa.context(lm=lm):
        pieces = stream(question="q")
        first = next(p for p in pieces if isinstance(p, StreamResponse))
        pieces.close()  # joins the program's thread, which stops at its next piece
    assert first.predict_name == "self"
    assert not [t for t in threading.enumerate() if t.name == "streamify"]
