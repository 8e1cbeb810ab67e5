"""LM requests are counted where they end: metrics and the console need no lm.* event per
request, a subscriber of lm.* still gets every request's, and the counts stay right."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

import dspy_actors as dsa
from dspy_actors.console._state import ConsoleState
from dspy_actors.lm.errors import LMError
from dspy_actors.metrics import app_metrics
from dspy_actors.runtime._call_stats import LMCounts
from dspy_actors.runtime._lm_pool import deployment_key
from dspy_actors.testing import HeldResponder, SimLM, wait_until
from dspy_actors.testing._faults import Fault


@pytest.fixture
def sim() -> Iterator[SimLM]:
    with SimLM() as sim:
        yield sim


@pytest.fixture
def app(sim: SimLM, tmp_path: Path) -> Iterator[Any]:
    with dsa.start(
        lm=dsa.LM("openai/sim-model", api_base=sim.openai_base, api_key="sim", cache=False,
                  num_retries=0),
        data_dir=tmp_path,
    ) as app:  # fmt: skip
        yield app


def _samples(app: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body = app_metrics(app).exposition()[0].decode()
    out = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_lm_requests_are_counted_without_events_and_lm_subscribers_still_get_them(
    app: Any, sim: SimLM
) -> None:
    qa = app.serve("qa", dsa.Predict("question -> answer"))
    qa.call(question="before metrics and the console were on")
    metrics = app_metrics(app)
    state = ConsoleState(app)
    try:
        assert app.events.flush(10.0)
        published = app.events.stats.published
        for i in range(5):
            qa.call(question=f"{i} + 1?")
        sim.inject(Fault.server_error(), times=1)
        with pytest.raises(LMError) as failed:
            qa.call(question="the LM fails this one")
        error_type = type(failed.value).__name__
        assert app.events.flush(10.0)
        # Metrics and the console are on: no lm.* (nor module.*) event was published...
        assert app.events.stats.published == published
        # ...and every request is counted, the one before they were on included.
        key = deployment_key(app.lm)
        s = _samples(app)
        requests = "dspy_actors_lm_requests_total"
        model = ("model", "openai/sim-model")
        assert s[(requests, (("deployment", key), model, ("outcome", "ok")))] == 6
        assert s[(requests, (("deployment", key), model, ("outcome", error_type)))] == 1
        assert s[("dspy_actors_lm_latency_seconds_count", (("deployment", key),))] == 7
        input_tokens = s[("dspy_actors_lm_tokens_total", (("deployment", key), ("kind", "input")))]
        assert input_tokens > 0
        (deployment,) = state.section("deployments")
        assert deployment["deployment"] == key
        assert deployment["requests"] == 7
        assert deployment["errors"] == {error_type: 1}
        assert deployment["in_flight"] == 0
        assert state.requests_changed()
        assert not state.requests_changed()

        # A subscriber of lm.* still gets every request's events; the counts do not double.
        seen: list[Any] = []
        sub = app.subscribe("lm.*", seen.append)
        for i in range(3):
            qa.call(question=f"{i} + 2?")
        assert app.events.flush(10.0)
        assert [e.topic for e in seen].count("lm.start") == 3
        ends = [e for e in seen if e.topic == "lm.end"]
        assert len(ends) == 3
        assert all(e.deployment == key and e.prompt_tokens for e in ends)
        app.events.unsubscribe(sub)
        s = _samples(app)
        assert s[(requests, (("deployment", key), model, ("outcome", "ok")))] == 9
        assert state.section("deployments")[0]["requests"] == 10
    finally:
        state.close()
        metrics.close()


def test_the_console_shows_lm_requests_in_flight_from_the_pool(app: Any, sim: SimLM) -> None:
    qa = app.serve("qa", dsa.Predict("question -> answer"))
    state = ConsoleState(app)
    held = HeldResponder()
    sim.respond_with(held)

    def in_flight() -> int:
        (deployment,) = state.section("deployments")
        return int(deployment["in_flight"])

    try:
        calls = [qa.submit(question=f"held {i}") for i in range(2)]
        try:
            held.wait_for_arrivals(2)
            assert in_flight() == 2
            assert state.requests_changed()  # (the console pushes the section then)
        finally:
            held.open()
        for call in calls:
            assert call.result(timeout=30.0).answer
        wait_until(lambda: in_flight() == 0, timeout=30.0, what="no request in flight")
        assert state.section("deployments")[0]["requests"] == 2
    finally:
        state.close()


def test_lm_counts_by_outcome_exclude_cache_hits_from_latency_and_tokens() -> None:
    counts = LMCounts()
    counts.ended("d", "m", 0.02, prompt_tokens=10, completion_tokens=3)
    counts.ended("d", "m", 0.0, cache_hit=True, prompt_tokens=10, completion_tokens=3)
    counts.ended("d", "m", 2.0, error_type="LMTimeout")
    counts.ended("e", "m2", 0.3, prompt_tokens=1, completion_tokens=None)
    totals = counts.totals()
    d = totals["d"]
    assert d.requests == 3
    assert d.outcomes == {("m", "ok"): 1, ("m", "cache_hit"): 1, ("m", "LMTimeout"): 1}
    assert d.errors == {"LMTimeout": 1}
    assert d.cache_hits == 1
    assert sum(d.buckets) == 2  # the hit has no latency
    assert d.latency_sum == pytest.approx(2.02)
    assert (d.prompt_tokens, d.completion_tokens) == (10, 3)
    assert (totals["e"].prompt_tokens, totals["e"].completion_tokens) == (1, 0)
    assert counts.ended_so_far == 4
    d.outcomes.clear()  # a copy: the counts keep theirs
    assert counts.totals()["d"].requests == 3
    assert len(counts.totals()["d"].outcomes) == 3


def test_lm_counts_from_many_threads_lose_nothing() -> None:
    counts = LMCounts()

    def end_many(t: int) -> None:
        for i in range(5000):
            counts.ended("d", f"m{t % 2}", 0.001 * (i % 7), prompt_tokens=1)

    threads = [threading.Thread(target=end_many, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    d = counts.totals()["d"]
    assert d.requests == 40_000 == sum(d.buckets) == d.prompt_tokens == counts.ended_so_far
    assert d.outcomes == {("m0", "ok"): 20_000, ("m1", "ok"): 20_000}
