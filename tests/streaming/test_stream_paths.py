"""Streamed calls through pipelines and agents, with events, deadlines and the breaker
behaving as for ``call`` (SimLM over real HTTP)."""

from __future__ import annotations

import threading
from typing import Any

import pytest

import dspy_actors as dsa
from dspy_actors.lm._breaker import CircuitOpen
from dspy_actors.runtime._errors import DeadlineExceeded
from dspy_actors.runtime._events import Event
from dspy_actors.streaming import StatusMessage
from dspy_actors.testing import FAST_RETRIES
from dspy_actors.testing._faults import Fault
from dspy_actors.testing._polling import wait_until
from dspy_actors.testing.sim_agent import AgentStep, react_responder
from dspy_actors.testing.sim_lm import SimLM
from tests.dspy_actors.runtime.programs import Retriever
from tests.streaming.conftest import StartApp
from tests.streaming.test_handle_stream import chat_answer, texts
from tests.streaming.test_stream_flow import HUGE, busy, first_field_piece


def test_a_pipeline_streams_each_steps_fields_by_path(sim: SimLM, start_app: StartApp) -> None:
    def respond(req: Any) -> str:
        if "## ok ##" in req.last_user_text or "`ok`" in req.last_user_text:
            return chat_answer(ok="yes")
        return chat_answer(reasoning="r", answer="Paris")

    sim.respond_with(respond)
    app = start_app()
    qa = app.program(
        "qa",
        [
            ("retrieve", Retriever, {"k": 1}),
            ("answer", dsa.ChainOfThought, {"signature": "question, passages -> answer"}),
            ("check", dsa.Predict, {"signature": "answer -> ok"}),
        ],
    )
    pieces = list(qa.stream(question="q"))
    assert pieces[-1].ok == "yes"
    assert texts(pieces) == {
        ("qa.answer", "reasoning"): "r",
        ("qa.answer", "answer"): "Paris",
        ("qa.check", "ok"): "yes",
    }


def test_a_served_agent_streams_tool_status_messages(sim: SimLM, start_app: StartApp) -> None:
    def lookup(key: str) -> str:
        """Look a key up."""
        return f"value of {key}"

    sim.respond_with(
        react_responder(
            [AgentStep("lookup", {"key": "k"}), AgentStep("finish")],
            answer=lambda ctx: {"answer": ctx.observations[0]},
        )
    )
    app = start_app()
    agent = app.serve("agent", dsa.ReAct("question -> answer", tools=[lookup]))
    pieces = list(agent.stream(question="q"))
    assert pieces[-1].answer == "value of k"
    status = [p.message for p in pieces if isinstance(p, StatusMessage)]
    assert "Calling tool lookup..." in status
    assert any(m.startswith("Tool calling finished") for m in status)


def test_streamed_calls_publish_the_events_of_a_call(sim: SimLM, start_app: StartApp) -> None:
    sim.respond_with(lambda req: chat_answer(answer="a b c"))
    app = start_app()
    seen: list[Event] = []
    lock = threading.Lock()

    def add(event: Event) -> None:
        with lock:
            seen.append(event)

    app.subscribe("*", add)
    qa = app.serve("qa", dsa.Predict("question -> answer"))
    list(qa.stream_with({"question": "q"}, trace_id="trace-streamed"))

    def topics() -> set[str]:
        with lock:
            return {e.topic for e in seen if e.trace_id == "trace-streamed"}

    # (Events are delivered by the event bus actor, after the answer.)
    wait_until(
        lambda: {"module.start", "module.end", "lm.start", "lm.end"} <= topics(), timeout=20.0
    )


def test_a_reader_stalled_past_the_deadline_gets_deadline_exceeded(
    sim: SimLM, start_app: StartApp
) -> None:
    sim.respond_with(lambda req: chat_answer(answer=HUGE))
    app = start_app()
    qa = app.serve("qa", dsa.Predict("question -> answer"))
    stream = qa.stream_with({"question": "q"}, buffer=4, timeout=0.5)
    first_field_piece(stream)
    # The reader stalls: the LM request waits at the full buffer until the deadline ends
    # it (its slot freed), however long the provider would take.
    wait_until(lambda: busy(app) == 0, timeout=20.0)
    with pytest.raises(DeadlineExceeded):
        list(stream)  # reads on: what was buffered, then the error


def test_an_open_breaker_fails_a_stream_as_it_fails_a_call(sim: SimLM, start_app: StartApp) -> None:
    app = start_app(
        breaker={"minimum_calls": 2, "window_size": 2, "wait_in_open": 60.0},
    )
    qa = app.serve("qa", dsa.Predict("question -> answer"))
    # Every attempt of both calls fails (each call tries 1 + max_retries times).
    sim.inject(Fault.server_error(), times=2 * (1 + FAST_RETRIES.max_retries))
    for i in range(2):
        with pytest.raises(dsa.lm.errors.LMError):
            qa.call(question=f"fail {i}")
    with pytest.raises(CircuitOpen):
        list(qa.stream(question="now"))
