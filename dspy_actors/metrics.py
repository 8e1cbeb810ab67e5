"""Prometheus metrics of a running app, on a registry of its own.

    metrics = dspy_actors.metrics.app_metrics(app)   # starts counting (once per app)
    body, content_type = metrics.exposition()        # what /metrics serves

Module calls and LM requests are counted where they are answered, with no event per call
or request (the app's ``call_stats``: per module path calls, errors by type and latency
buckets; its ``lm_counts``: per deployment requests by model and outcome, latency buckets
and tokens), and become metric families only when scraped. Gauges (breaker state, LM
requests in flight and queued, calls in flight per program) and usage (tokens, cost,
retries) are read from the app when scraped too; only what is rare (breaker transitions,
restarts, dead letters) is counted from events. The names are listed in
docs/observability.md and in ``METRIC_NAMES``.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

import supervisors
from dspy_actors._stop_hooks import forget_stop_hook, on_stop
from dspy_actors.runtime import _events as ev
from dspy_actors.runtime._call_stats import cumulative

if TYPE_CHECKING:
    from dspy_actors.runtime.app import App

__all__ = ["METRIC_NAMES", "AppMetrics", "app_metrics"]

METRIC_NAMES = (
    "dspy_actors_module_calls_total",
    "dspy_actors_module_errors_total",
    "dspy_actors_module_latency_seconds",
    "dspy_actors_lm_requests_total",
    "dspy_actors_lm_latency_seconds",
    "dspy_actors_lm_tokens_total",
    "dspy_actors_lm_retries_total",
    "dspy_actors_lm_in_flight",
    "dspy_actors_lm_queue_depth",
    "dspy_actors_breaker_state",
    "dspy_actors_breaker_transitions_total",
    "dspy_actors_program_in_flight",
    "dspy_actors_program_tokens_total",
    "dspy_actors_program_cost_usd_total",
    "dspy_actors_program_version",
    "dspy_actors_restarts_total",
    "dspy_actors_dead_letters_total",
    "dspy_actors_events_dropped_total",
)

_BREAKER_STATES = ("closed", "open", "half_open")


def _program_of(path: str) -> str:
    return path.split(".", 1)[0]


class AppMetrics:
    """The metrics of one app (see the module docstring); :meth:`close` stops counting."""

    def __init__(self, app: App) -> None:
        self._app = weakref.ref(app)
        self.app_name = app.name
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # Rare events keep prometheus_client's own counters.
        self.breaker_transitions = Counter(
            "dspy_actors_breaker_transitions", "Circuit-breaker state changes.",
            ("deployment", "to_state"), registry=r,
        )  # fmt: skip
        self.restarts = Counter(
            "dspy_actors_restarts", "Actors restarted by their supervisor.", ("supervisor",),
            registry=r,
        )  # fmt: skip
        self.dead_letters = Counter(
            "dspy_actors_dead_letters", "Inputs quarantined as dead letters.", ("program",),
            registry=r,
        )  # fmt: skip
        r.register(_CallCollector(self))
        r.register(_ScrapeTimeCollector(self))
        self._call_stats = app.call_stats
        self._lm_counts = app.lm_counts
        self._subscriptions = [
            app.subscribe("breaker.transition", self._breaker),
            app.subscribe("dead_letter", self._dead_letter),
        ]
        self._unsubscribe_supervision = supervisors.subscribe(self._supervision)

    def exposition(self) -> tuple[bytes, str]:
        """The metrics in Prometheus' text format, and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def close(self) -> None:
        app = self._app()
        if app is not None:
            for sub in self._subscriptions:
                app.events.unsubscribe(sub)
        self._subscriptions = []
        self._unsubscribe_supervision()
        with _lock:
            if _by_app.get(id(app)) is self:
                del _by_app[id(app)]
        if app is not None:
            forget_stop_hook(app, self.close)

    # Subscribers (the event bus's thread). -----------------------------------------------

    def _call_families(self) -> Iterator[Any]:
        """The call and request counters as metric families (a scrape: copies)."""
        calls = CounterMetricFamily(
            "dspy_actors_module_calls", "Module calls ended (success or error).",
            labels=["program", "module"],
        )  # fmt: skip
        errors = CounterMetricFamily(
            "dspy_actors_module_errors", "Module calls that failed, by error type.",
            labels=["program", "module", "error_type"],
        )  # fmt: skip
        module_latency = HistogramMetricFamily(
            "dspy_actors_module_latency_seconds", "Module call latency.",
            labels=["program", "module"],
        )  # fmt: skip
        requests = CounterMetricFamily(
            "dspy_actors_lm_requests", "LM requests ended; outcome: ok, cache_hit or the "
            "error type.", labels=["deployment", "model", "outcome"],
        )  # fmt: skip
        lm_latency = HistogramMetricFamily(
            "dspy_actors_lm_latency_seconds", "LM request latency.", labels=["deployment"]
        )
        tokens = CounterMetricFamily(
            "dspy_actors_lm_tokens", "LM tokens; kind: input or output.",
            labels=["deployment", "kind"],
        )  # fmt: skip
        for path, totals in sorted(self._call_stats.totals().items()):
            if not totals.calls:
                continue  # families appear with the first calls
            program = _program_of(path)
            calls.add_metric([program, path], totals.calls)
            for error_type, n in totals.errors.items():
                errors.add_metric([program, path, error_type], n)
            module_latency.add_metric(
                [program, path], totals.cumulative_buckets(), totals.latency_sum
            )
        for deployment, lm in sorted(self._lm_counts.totals().items()):
            for (model, outcome), n in lm.outcomes.items():
                requests.add_metric([deployment, model, outcome], n)
            if lm.requests > lm.cache_hits:  # (cache hits have no latency)
                lm_latency.add_metric([deployment], cumulative(lm.buckets), lm.latency_sum)
            for kind, n in (("input", lm.prompt_tokens), ("output", lm.completion_tokens)):
                if n:
                    tokens.add_metric([deployment, kind], n)
        yield from (calls, errors, module_latency, requests, lm_latency, tokens)

    def _breaker(self, event: ev.BreakerTransition) -> None:
        self.breaker_transitions.labels(event.deployment, event.to_state).inc()

    def _dead_letter(self, event: ev.DeadLetterEvent) -> None:
        self.dead_letters.labels(event.program).inc()

    def _supervision(self, event: supervisors.SupervisorEvent) -> None:
        name = self.app_name
        ours = event.supervisor == name or event.supervisor.startswith(name + "/")
        if ours and event.kind == "child_restarted":
            self.restarts.labels(event.supervisor).inc()


class _CallCollector(Collector):
    """The call counters, turned into metric families when scraped."""

    def __init__(self, metrics: AppMetrics) -> None:
        self._metrics = metrics

    def describe(self) -> list[Any]:
        return []  # families appear with the first calls

    def collect(self) -> Iterator[Any]:
        return self._metrics._call_families()


class _ScrapeTimeCollector(Collector):
    """What is read from the app when scraped: gauges, and usage the app already counts."""

    def __init__(self, metrics: AppMetrics) -> None:
        self._metrics = metrics

    def describe(self) -> list[Any]:
        return []  # no fixed set: families depend on the app's programs and deployments

    def collect(self) -> Iterator[Any]:
        from dspy_actors.console._app_view import deployments, served_programs

        app = self._metrics._app()
        if app is None:
            return
        in_flight = GaugeMetricFamily(
            "dspy_actors_program_in_flight", "Calls in flight per program.", labels=["program"]
        )
        version = GaugeMetricFamily(
            "dspy_actors_program_version", "The version a program serves.", labels=["program"]
        )
        tokens = CounterMetricFamily(
            "dspy_actors_program_tokens", "Tokens a program's calls spent; kind: input or "
            "output.", labels=["program", "kind"],
        )  # fmt: skip
        cost = CounterMetricFamily(
            "dspy_actors_program_cost_usd", "Cost in USD of a program's calls, where known.",
            labels=["program"],
        )  # fmt: skip
        for p in served_programs(app):
            in_flight.add_metric([p["name"]], p["in_flight"])
            version.add_metric([p["name"]], p["version"])
            tokens.add_metric([p["name"], "input"], p["prompt_tokens"])
            tokens.add_metric([p["name"], "output"], p["completion_tokens"])
            cost.add_metric([p["name"]], p["cost_usd"] or 0.0)
        yield from (in_flight, version, tokens, cost)
        state = GaugeMetricFamily(
            "dspy_actors_breaker_state", "1 for a deployment's current breaker state.",
            labels=["deployment", "state"],
        )  # fmt: skip
        retries = CounterMetricFamily(
            "dspy_actors_lm_retries", "HTTP retries of a deployment's LM.", labels=["deployment"]
        )
        for d in deployments(app, {}):
            for s in _BREAKER_STATES:
                state.add_metric([d["deployment"], s], 1.0 if d["breaker"]["state"] == s else 0.0)
            if d["retries"] is not None:
                retries.add_metric([d["deployment"]], d["retries"])
        yield from (state, retries)
        pool = app.dispatcher.stats()
        yield GaugeMetricFamily(
            "dspy_actors_lm_in_flight", "LM requests in flight in the pool.", value=pool["busy"]
        )
        yield GaugeMetricFamily(
            "dspy_actors_lm_queue_depth", "LM requests waiting in the pool's queue.",
            value=pool["queued"],
        )  # fmt: skip
        yield CounterMetricFamily(
            "dspy_actors_events_dropped", "Events the bus could not deliver.",
            value=app.events.stats.dropped,
        )  # fmt: skip


_by_app: dict[int, AppMetrics] = {}
_lock = threading.Lock()


def app_metrics(app: App) -> AppMetrics:
    """The metrics of ``app``, started on first use (one registry per app)."""
    with _lock:
        metrics = _by_app.get(id(app))
        if metrics is None or metrics._app() is not app:
            metrics = _by_app[id(app)] = AppMetrics(app)
            on_stop(app, metrics.close)
        return metrics
