"""Module calls are counted where they are answered: metrics and the console need no event
per call; a subscriber that asks for every call's events still gets them; tracing's sampler
decides on the call path, and a call it does not pick publishes nothing."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from prometheus_client.parser import text_string_to_metric_families

import dspy_actors as dsa
from dspy_actors.console._state import ConsoleState
from dspy_actors.lm.errors import LMError
from dspy_actors.metrics import app_metrics
from dspy_actors.runtime._call_stats import RECENT, CallStats
from dspy_actors.runtime.app import App
from dspy_actors.testing import SimLM
from dspy_actors.testing._faults import Fault
from dspy_actors.tracing import trace_app
from dspy_actors.tracing._sampling import CallSampler
from tests.observability.conftest import StartApp


@pytest.fixture
def app(start_app: StartApp) -> App:
    return start_app(cache=True)  # a repeated question is answered from the cache


def _metric(app: Any, name: str, **labels: str) -> float:
    body = app_metrics(app).exposition()[0].decode()
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    raise AssertionError(f"no sample {name} {labels} in:\n{body}")


def test_metrics_and_console_count_calls_without_an_event_per_call(app: Any, sim: SimLM) -> None:
    metrics = app_metrics(app)
    state = ConsoleState(app)
    try:
        qa = app.serve("qa", dsa.Predict("question -> answer"))
        qa.call(question="fill the cache")
        assert app.events.flush(10.0)
        published = app.events.stats.published
        for _ in range(50):
            qa.call(question="fill the cache")  # cached: answered by the module actor
        assert app.events.flush(10.0)
        # No event was published for them (metrics and the console subscribe only to what
        # is rare)...
        assert app.events.stats.published == published
        # ...and every one is counted.
        assert _metric(app, "dspy_actors_module_calls_total", module="qa") == 51
        latency = _metric(app, "dspy_actors_module_latency_seconds_count", module="qa")
        assert latency == 51
        assert _metric(app, "dspy_actors_module_latency_seconds_bucket", le="+Inf") == 51
        (program,) = state.section("programs")
        assert program["calls"] == 51
        assert program["p50_s"] is not None
        assert program["p99_s"] >= program["p50_s"]
        assert state.calls_changed()
        assert not state.calls_changed()
        sim.inject(Fault.server_error(), times=1)
        with pytest.raises(LMError) as failed:
            qa.call(question="a new question: sent, and the LM fails")
        error_type = type(failed.value).__name__
        errors = _metric(app, "dspy_actors_module_errors_total", error_type=error_type)
        assert errors == 1
        assert _metric(app, "dspy_actors_module_calls_total", module="qa") == 52
        (program,) = state.section("programs")
        assert program["errors"] == {error_type: 1}
    finally:
        state.close()
        metrics.close()


def test_a_subscriber_of_every_call_still_gets_every_call_and_errors_by_type(app: Any) -> None:
    app_metrics(app)
    seen: list[Any] = []
    sub = app.subscribe("module.*", seen.append)
    qa = app.serve("qa", dsa.Predict("question -> answer"))
    for i in range(5):
        qa.call(question=f"{i}?")
    assert app.events.flush(10.0)
    assert [e.topic for e in seen].count("module.start") == 5
    assert [e.topic for e in seen].count("module.end") == 5
    app.events.unsubscribe(sub)
    published = app.events.stats.published
    for i in range(5):
        qa.call(question=f"{i}?")  # cached now
    assert app.events.flush(10.0)
    assert app.events.stats.published == published
    assert _metric(app, "dspy_actors_module_calls_total", module="qa") == 10


def test_tracing_samples_on_the_call_path_and_unpicked_calls_publish_nothing(app: Any) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(0.5)))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = trace_app(app, provider)
    sampler = CallSampler(provider)
    qa = app.serve("qa", dsa.Predict("question -> answer"))
    qa.call(question="cached from now on")
    assert app.events.flush(10.0)
    exporter.clear()
    published = app.events.stats.published
    trace_ids = [f"test-call-{i}" for i in range(200)]
    picked = [t for t in trace_ids if sampler(t)]
    assert 40 < len(picked) < 160  # about half: the ratio, decided per trace id
    for trace_id in trace_ids:
        qa.call_with({"question": "cached from now on"}, trace_id=trace_id)
    assert app.events.flush(10.0)
    tracing.close()
    provider.shutdown()
    # Each picked call published its module.start and module.end; the others nothing.
    assert app.events.stats.published - published == 2 * len(picked)
    calls = [s for s in exporter.get_finished_spans() if s.name == "call qa"]
    assert sorted(s.attributes["dspy_actors.trace_id"] for s in calls) == sorted(picked)
    assert all(s.context.trace_flags.sampled for s in calls)
    # The span's trace id is the call's own, so the sampler's answer is the SDK's.
    for span in calls:
        own = CallSampler.otel_trace_id(str(span.attributes["dspy_actors.trace_id"]))
        assert span.context.trace_id == own
    assert app.events.call_sampler is None  # closed: no call is sampled any more


def test_call_stats_keep_the_counts_of_actors_that_ended() -> None:
    stats = CallStats()
    first = stats.cell("qa")
    for i in range(RECENT + 10):
        first.ended(0.002 if i % 2 else 0.2)
    first.ended(0.5, "LMError")
    stats.retire("qa", first)
    second = stats.cell("qa")  # the restarted actor's
    second.ended(20.0, "ValueError")
    second.ended(0.003)
    totals = stats.totals()["qa"]
    assert totals.calls == RECENT + 13 == stats.calls_ended()
    assert totals.errors == {"LMError": 1, "ValueError": 1}
    assert len(totals.recent) == RECENT + 2  # the retired ring, and the live cell's two
    buckets = dict(totals.cumulative_buckets())
    assert buckets["0.005"] == (RECENT + 10) // 2 + 1
    assert buckets["+Inf"] == totals.calls
    assert totals.latency_sum == pytest.approx(
        (RECENT + 10) // 2 * (0.002 + 0.2) + 0.5 + 20.0 + 0.003
    )
    stats.retire("qa", first)  # twice: nothing more
    assert stats.totals()["qa"].calls == totals.calls
