"""Tracing honours the provider's sampler, decided once per call; a provider that is not
the SDK's gets live spans through its tracer."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased
from opentelemetry.trace import Tracer

import dspy_actors as dsa
from dspy_actors.testing import SimLM
from dspy_actors.tracing import trace_app, trace_id_from_traceparent

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Any]:
    with (
        SimLM() as sim,
        dsa.start(
            lm=dsa.LM("openai/sim-model", api_base=sim.openai_base, api_key="sim", cache=False),
            data_dir=tmp_path,
        ) as app,
    ):
        yield app


def test_a_call_the_sampler_drops_has_no_spans_and_a_sampled_caller_is_followed(
    app: Any,
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ParentBased(ALWAYS_OFF))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = trace_app(app, provider)
    qa = app.serve("qa", dsa.Predict("question -> answer"))
    qa.call(question="a trace of our own: dropped")
    sampled = trace_id_from_traceparent(f"00-{CALLER_TRACE}-{CALLER_SPAN}-01")
    qa.call_with({"question": "the caller sampled this one"}, trace_id=sampled)
    unsampled = trace_id_from_traceparent(f"00-{'1' * 32}-{CALLER_SPAN}-00")
    qa.call_with({"question": "the caller did not sample this one"}, trace_id=unsampled)
    assert app.events.flush(10.0)
    tracing.close()
    provider.shutdown()
    spans = exporter.get_finished_spans()
    assert sorted(s.name for s in spans) == ["call qa", "chat openai/sim-model", "module qa"]
    assert {s.context.trace_id for s in spans} == {int(CALLER_TRACE, 16)}
    assert all(s.context.trace_flags.sampled for s in spans)


class _WrappedProvider:
    """A provider that is not the SDK's (as a vendor's wrapper would be)."""

    def __init__(self, inner: TracerProvider) -> None:
        self.inner = inner

    def get_tracer(self, name: str, *args: Any, **kwargs: Any) -> Tracer:
        return self.inner.get_tracer(name, *args, **kwargs)


def test_another_provider_gets_live_spans_with_the_same_shape(app: Any) -> None:
    exporter = InMemorySpanExporter()
    inner = TracerProvider()
    inner.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = trace_app(app, _WrappedProvider(inner))  # type: ignore[arg-type]
    qa = app.serve("qa", dsa.Predict("question -> answer"))
    qa.call(question="live spans")
    assert app.events.flush(10.0)
    tracing.close()
    inner.shutdown()
    by_name = {s.name: s for s in exporter.get_finished_spans()}
    assert set(by_name) == {"call qa", "module qa", "chat openai/sim-model"}
    call, module, chat = by_name["call qa"], by_name["module qa"], by_name["chat openai/sim-model"]
    assert module.parent is not None
    assert module.parent.span_id == call.context.span_id
    assert chat.parent is not None
    assert chat.parent.span_id == module.context.span_id
    assert chat.attributes["gen_ai.usage.input_tokens"] > 0


def test_lm_http_retries_are_events_on_the_chat_span(tmp_path: Path) -> None:
    from dspy_actors.lm._retry import RetryPolicy
    from dspy_actors.testing._faults import Fault

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with SimLM() as sim:
        lm = dsa.LM(
            "openai/sim-model", api_base=sim.openai_base, api_key="sim", cache=False,
            retry_policy=RetryPolicy(max_retries=3, base_delay=0.01, max_delay=0.05),
        )  # fmt: skip
        with dsa.start(lm=lm, data_dir=tmp_path) as app:
            tracing = trace_app(app, provider)
            qa = app.serve("qa", dsa.Predict("question -> answer"))
            sim.inject(Fault.server_error(), times=2)
            assert qa.call(question="flaky provider").answer
            qa.call(question="a healthy one")
            assert app.events.flush(10.0)
            tracing.close()
    provider.shutdown()
    chats = [s for s in exporter.get_finished_spans() if s.name.startswith("chat ")]
    assert len(chats) == 2
    flaky, healthy = sorted(chats, key=lambda s: s.start_time or 0)
    retries = [e for e in flaky.events if e.name == "retry"]
    assert len(retries) == 2
    for event in retries:
        assert event.attributes is not None
        assert event.attributes["error.type"] == "ServerError"
        assert event.attributes["dspy_actors.retry_delay_s"] > 0
        assert (flaky.start_time or 0) <= event.timestamp <= (flaky.end_time or 0)
    assert not [e for e in healthy.events if e.name == "retry"]
