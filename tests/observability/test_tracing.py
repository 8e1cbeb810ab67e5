"""OpenTelemetry spans from a real app (SimLM over loopback), read from the SDK's
in-memory exporter."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import dspy_actors as dsa
from dspy_actors.lm.errors import LMError
from dspy_actors.testing import SimLM
from dspy_actors.tracing import trace_app, trace_id_from_traceparent

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


class Draft(dsa.Module):
    def __init__(self) -> None:
        super().__init__()
        self.outline = dsa.Predict("question -> outline")
        self.answer = dsa.ChainOfThought("question, outline -> answer")

    def forward(self, question: str) -> dsa.Prediction:
        outline = self.outline(question=question).outline
        return self.answer(question=question, outline=outline)


@pytest.fixture
def sim() -> Iterator[SimLM]:
    with SimLM() as sim:
        yield sim


@pytest.fixture
def traced(sim: SimLM, tmp_path: Path) -> Iterator[tuple[Any, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with dsa.start(
        lm=dsa.LM("openai/sim-model", api_base=sim.openai_base, api_key="sim", cache=False),
        data_dir=tmp_path,
    ) as app:
        trace_app(app, provider)
        yield app, exporter
    provider.shutdown()


def _spans(app: Any, exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    assert app.events.flush(10.0)
    return list(exporter.get_finished_spans())


def test_traceparent_parsing() -> None:
    header = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
    assert trace_id_from_traceparent(header) == f"{CALLER_TRACE}-{CALLER_SPAN}"
    for bad in (
        None,
        "",
        "garbage",
        f"00-{'0' * 32}-{CALLER_SPAN}-01",
        f"ff-{CALLER_TRACE}-{CALLER_SPAN}-01",
    ):
        assert trace_id_from_traceparent(bad) is None


def test_a_call_continues_the_callers_trace_across_every_hop(traced: Any) -> None:
    app, exporter = traced
    draft = app.serve("draft", Draft())
    trace_id = trace_id_from_traceparent(f"00-{CALLER_TRACE}-{CALLER_SPAN}-01")
    draft.call_with({"question": "2 + 2?"}, trace_id=trace_id)
    spans = _spans(app, exporter)
    by_name = {s.name: s for s in spans}
    assert set(by_name) == {
        "call draft", "module draft", "module draft.outline", "module draft.answer",
        "chat openai/sim-model",
    } or len([s for s in spans if s.name == "chat openai/sim-model"]) == 2  # fmt: skip
    assert all(s.context.trace_id == int(CALLER_TRACE, 16) for s in spans)
    call = by_name["call draft"]
    assert call.parent is not None
    assert call.parent.span_id == int(CALLER_SPAN, 16)
    assert by_name["module draft"].parent.span_id == call.context.span_id
    root = by_name["module draft"].context.span_id
    assert by_name["module draft.outline"].parent.span_id == root
    assert by_name["module draft.answer"].parent.span_id == root
    lm_spans = [s for s in spans if s.name == "chat openai/sim-model"]
    assert len(lm_spans) == 2
    steps = {by_name["module draft.outline"].context.span_id,
             by_name["module draft.answer"].context.span_id}  # fmt: skip
    assert {s.parent.span_id for s in lm_spans} == steps
    for s in lm_spans:
        attrs = s.attributes
        assert attrs["gen_ai.operation.name"] == "chat"
        assert attrs["gen_ai.request.model"] == "openai/sim-model"
        assert attrs["gen_ai.usage.input_tokens"] > 0
        assert attrs["gen_ai.usage.output_tokens"] > 0
        assert list(attrs["gen_ai.response.finish_reasons"]) == ["stop"]
        assert s.start_time >= call.start_time
        assert s.end_time <= call.end_time


def test_a_pipeline_call_is_one_span_over_its_steps(traced: Any) -> None:
    app, exporter = traced
    qa = app.program("qa", [
        ("draft", dsa.Predict, {"signature": "question -> draft"}),
        ("answer", dsa.Predict, {"signature": "question, draft -> answer"}),
    ])  # fmt: skip
    qa.call(question="3 + 3?")
    spans = _spans(app, exporter)
    (call,) = [s for s in spans if s.name == "call qa"]
    steps = [s for s in spans if s.name.startswith("module qa.")]
    assert sorted(s.name for s in steps) == ["module qa.answer", "module qa.draft"]
    assert all(s.parent.span_id == call.context.span_id for s in steps)
    assert call.end_time >= max(s.end_time for s in steps)
    # Without a traceparent the call span is a root of a trace of its own.
    assert call.parent is None


class Crashy(dsa.Module):
    crashes = 0

    def forward(self, question: str) -> dsa.Prediction:
        if Crashy.crashes < 1:
            Crashy.crashes += 1
            raise RuntimeError("crash once")
        return dsa.Prediction(answer="ok")


def test_retries_and_restarts_are_span_events_and_errors_have_status(traced: Any) -> None:
    app, exporter = traced
    Crashy.crashes = 0
    svc = app.serve("svc", Crashy(), idempotent=True)
    assert svc.call(question="q").answer == "ok"
    spans = [s for s in _spans(app, exporter) if s.name == "call svc"]
    assert len(spans) == 2
    failed, retried = sorted(spans, key=lambda s: s.start_time)
    assert failed.status.status_code == StatusCode.ERROR
    assert failed.attributes["error.type"] == "RuntimeError"
    assert [e.name for e in retried.events].count("retry") == 1
    assert retried.status.status_code != StatusCode.ERROR
    assert [e.name for e in failed.events] == ["exception"]
    (restart,) = [e for e in retried.events if e.name == "restart"]
    assert restart.attributes["dspy_actors.child_id"].startswith("svc@v1")
    assert failed.end_time <= restart.timestamp <= retried.end_time


def test_an_lm_error_is_an_error_span(traced: Any, sim: SimLM) -> None:
    from dspy_actors.testing._faults import Fault

    app, exporter = traced
    sim.inject(Fault.bad_request("no such thing"), times=1)
    qa = app.serve("qa", dsa.Predict("question -> answer"))
    with pytest.raises(LMError):
        qa.call(question="x")
    (span,) = [s for s in _spans(app, exporter) if s.name.startswith("chat ")]
    assert span.status.status_code == StatusCode.ERROR
    assert span.attributes["error.type"] == "BadRequest"
    (call,) = [s for s in _spans(app, exporter) if s.name == "call qa"]
    assert call.status.status_code == StatusCode.ERROR


def test_tracing_is_off_unless_configured(sim: SimLM, tmp_path: Path) -> None:
    with dsa.start(
        lm=dsa.LM("openai/sim-model", api_base=sim.openai_base, api_key="sim", cache=False),
        data_dir=tmp_path,
    ) as app:
        assert app.events.subscriptions() == ()
