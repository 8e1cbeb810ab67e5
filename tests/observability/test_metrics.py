"""Prometheus metrics of a real app, parsed back with prometheus_client's own parser."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

import dspy_actors as dsa
import supervisors
from dspy_actors.lm._breaker import CircuitOpen
from dspy_actors.lm.errors import LMError
from dspy_actors.metrics import METRIC_NAMES, app_metrics
from dspy_actors.runtime._errors import ModuleCrashed
from dspy_actors.runtime._lm_pool import deployment_key
from dspy_actors.runtime.app import App
from dspy_actors.testing import SimLM
from dspy_actors.testing._faults import Fault
from tests.observability.conftest import StartApp
from tests.supervisors.actors import wait_until


@pytest.fixture
def app(start_app: StartApp) -> App:
    return start_app(
        breaker={"minimum_calls": 4, "window_size": 4, "failure_rate_threshold": 0.5,
                 "wait_in_open": 60.0},
    )  # fmt: skip


def _answered(qa: Any) -> bool:
    try:
        return bool(qa.call(question="back").answer)
    except ModuleCrashed:  # still restarting
        return False


def _samples(app: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    assert app.events.flush(10.0)
    body, content_type = app_metrics(app).exposition()
    assert content_type.startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_calls_latency_tokens_errors_restarts_breaker(app: Any, sim: SimLM) -> None:
    metrics = app_metrics(app)
    assert app_metrics(app) is metrics  # one registry per app
    qa = app.serve("qa", dsa.Predict("question -> answer"))
    for i in range(3):
        qa.call(question=f"{i}?")
    supervisors.kill(app.registry.lookup(f"{app.name}/qa@v1/"))
    wait_until(lambda: _answered(qa), timeout=30.0)
    sim.inject(Fault.server_error(), times=2)
    for _ in range(2):
        with pytest.raises(LMError):
            qa.call(question="fails")
    with pytest.raises(CircuitOpen):
        qa.call(question="refused")
    s = _samples(app)
    calls = s[("dspy_actors_module_calls_total", (("module", "qa"), ("program", "qa")))]
    assert calls >= 6
    latency = ("dspy_actors_module_latency_seconds_count", (("module", "qa"), ("program", "qa")))
    assert s[latency] == calls
    errors = {k[1]: v for k, v in s.items() if k[0] == "dspy_actors_module_errors_total"}
    assert sum(errors.values()) >= 3
    deployment = deployment_key(app.lm)
    labels = (("deployment", deployment), ("model", "openai/sim-model"), ("outcome", "ok"))
    ok = s[("dspy_actors_lm_requests_total", labels)]
    assert ok == 4
    assert s[("dspy_actors_lm_tokens_total", (("deployment", deployment), ("kind", "input")))] > 0
    assert s[("dspy_actors_program_tokens_total", (("kind", "output"), ("program", "qa")))] > 0
    assert s[("dspy_actors_breaker_state", (("deployment", deployment), ("state", "open")))] == 1
    opened = (
        "dspy_actors_breaker_transitions_total",
        (("deployment", deployment), ("to_state", "open")),
    )
    assert s[opened] == 1
    restarts = [v for k, v in s.items() if k[0] == "dspy_actors_restarts_total"]
    assert sum(restarts) >= 1
    assert s[("dspy_actors_program_version", (("program", "qa"),))] == 1
    assert s[("dspy_actors_program_in_flight", (("program", "qa"),))] == 0
    assert ("dspy_actors_lm_queue_depth", ()) in s
    assert ("dspy_actors_lm_in_flight", ()) in s
    body = app_metrics(app).exposition()[0].decode()
    documented = {
        line.split()[2]
        for line in body.splitlines()
        if line.startswith("# TYPE") and not line.split()[2].endswith("_created")
    }
    # Counters are typed under their name without "_total".
    assert {n.removesuffix("_total") for n in METRIC_NAMES} == {
        n.removesuffix("_total") for n in documented
    }
