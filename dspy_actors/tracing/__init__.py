"""OpenTelemetry spans of a running app: one per call, per module step, per LM request.

Off unless configured: ``trace_app(app, tracer_provider)`` subscribes to the app's events
(in batches, on the event bus's thread) and turns them into spans started and ended at the
events' own timestamps. Sampling is decided on the call path (``_sampling.py``): with the
SDK's ``TracerProvider`` the provider's sampler decides once per call, from its trace id,
and a call not sampled builds and publishes no event for tracing (nor gets any span); a
sampled call publishes its module and LM events, and its spans are built off the path.
Each span is handed to the provider's span processors as a finished ``ReadableSpan`` built
from the recorded times, ids and attributes: about a tenth of the CPU of a live SDK span (no
locks, no per-attribute checks). Any other provider gets every call's events, and live
spans through its tracer (which samples them).

- ``call <program>``: a call of a served program (the span a caller's trace continues);
- ``module <path>``: each module (or pipeline step) that handled it, nested by path;
- ``chat <model>``: each LM request, with the GenAI semantic conventions
  (``gen_ai.operation.name``, ``gen_ai.request.model``, ``gen_ai.usage.input_tokens``,
  ``gen_ai.usage.output_tokens``, ``gen_ai.response.finish_reasons``, ``error.type``).

A crash retried by an idempotent program is a ``retry`` event on the new call span; an
actor restarted while a call of its program is open is a ``restart`` event on it; an LM
request's HTTP retry (a 5xx, a 429, a timeout) is a ``retry`` event on its ``chat`` span,
with ``error.type`` and ``dspy_actors.retry_delay_s``.

W3C trace context: ``trace_id_from_traceparent(header)`` turns an incoming
``traceparent`` header into the runtime's trace id; pass it as ``call_with(...,
trace_id=...)``. The id travels in the call's context through every actor hop and the LM
workers, and every span of the call is created in the caller's trace, under its span.
"""

from __future__ import annotations

import re
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.trace import (
    Span,
    SpanContext,
    SpanKind,
    TraceFlags,
    TracerProvider,
)

from dspy_actors._stop_hooks import forget_stop_hook, on_stop
from dspy_actors.runtime import _events as ev
from dspy_actors.tracing._sampling import CallSampler, remote_parent_of
from dspy_actors.tracing._spans import OpenSpan, Spans

if TYPE_CHECKING:
    from dspy_actors.runtime.app import App

__all__ = ["AppTracing", "trace_app", "trace_id_from_traceparent", "traceparent_of"]

_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_CALL_TOPICS = frozenset(t for topics in ev.CALL_TOPICS.values() for t in topics)
_PROGRAM_IN_NODE = re.compile(r"(?:^|/)([^/@]+)@v\d+")
# Open spans kept per app at most: events that lost their end (dropped) must not grow memory.
_MAX_OPEN = 100_000


def trace_id_from_traceparent(header: str | None) -> str | None:
    """The runtime trace id continuing the W3C ``traceparent`` ``header``, or None when the
    header is missing or malformed (then, as the W3C spec says, a new trace starts)."""
    if not header:
        return None
    match = _TRACEPARENT.fullmatch(header.strip().lower())
    if match is None:
        return None
    version, trace_hex, span_hex, flags = match.groups()
    if version == "ff" or set(trace_hex) == {"0"} or set(span_hex) == {"0"}:
        return None
    if not int(flags, 16) & TraceFlags.SAMPLED:
        return f"{trace_hex}-{span_hex}-{flags}"  # the sampler may follow the caller's "no"
    return f"{trace_hex}-{span_hex}"


def traceparent_of(span: Span) -> str:
    """The ``traceparent`` header naming ``span`` (to pass a trace on to another service)."""
    ctx = span.get_span_context()
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


@dataclass
class _Call:
    span: OpenSpan | None  # None: not sampled (its modules and LM requests get no spans)
    program: str
    end_path: str
    # Open module spans of this call, in start order: (path, span; None if not sampled).
    modules: list[tuple[str, OpenSpan | None]] = field(default_factory=list)


class AppTracing:
    """Spans of one app from its events; :meth:`close` stops tracing (see the module doc)."""

    def __init__(self, app: App, tracer_provider: TracerProvider | None = None) -> None:
        provider = tracer_provider or trace.get_tracer_provider()
        self._spans = Spans(provider)
        self._sampled = CallSampler(provider)
        self.tracer = self._spans.tracer
        self._app = weakref.ref(app)
        self._lock = threading.Lock()
        self._calls: dict[str | None, _Call] = {}
        # Calls of a trace that ended in an error, per program: the next is a retry.
        self._failed: dict[tuple[str | None, str], int] = {}
        self._lm: dict[tuple[str | None, str], list[OpenSpan]] = {}
        self._shapes: dict[str, str] = {}
        # Restarts of a program's actors since its last failed call: the retry's call span
        # gets them as events (the failed call's span has ended by the time they happen).
        self._restarts: dict[str, list[tuple[dict[str, Any], int]]] = {}
        # One subscription for every topic: spans depend on the order of module, LM and
        # restart events, which separate batches (one per subscription) would not keep.
        # sampled_calls: calls the sampler does not pick publish no module or LM events.
        self._subscriptions = [
            app.events.subscribe("*", self._events, batch=True, sampled_calls=True)
        ]
        app.events.call_sampler = self._sampled

    def close(self) -> None:
        """Stop making spans; spans still open are ended now."""
        app = self._app()
        if app is not None:
            if app.events.call_sampler is self._sampled:
                app.events.call_sampler = None
            for sub in self._subscriptions:
                app.events.unsubscribe(sub)
            forget_stop_hook(app, self.close)
            with _lock:
                if _by_app.get(id(app)) is self:
                    del _by_app[id(app)]
        self._subscriptions = []
        with self._lock:
            open_spans = [s for _, s in (m for c in self._calls.values() for m in c.modules)]
            open_spans += [c.span for c in self._calls.values()]
            open_spans += [s for spans in self._lm.values() for s in spans]
            self._calls.clear()
            self._lm.clear()
            now = time.time_ns()
            for span in open_spans:
                if span is not None:
                    self._spans.end(span, now)

    def _decided(self, trace_id: str | None) -> tuple[int | None, bool]:
        """A root span's trace id and "sampled already" for a call the sampler picked on
        its path (every call event that reaches the spans was)."""
        if trace_id is None:
            return None, False
        return self._sampled.otel_trace_id(trace_id), True

    # Which module path ends a call of a program: its root, or a pipeline's last step.
    def _end_path(self, program: str) -> str:
        known = self._shapes.get(program)
        if known is not None:
            return known
        app = self._app()
        end = program
        if app is not None:
            from dspy_actors.console._app_view import call_end_path

            end = call_end_path(app, program)
        self._shapes[program] = end
        return end

    # Subscribers (the event bus's thread). -----------------------------------------------

    def _events(self, events: Sequence[ev.Event]) -> None:
        sampled = self._sampled
        with self._lock:
            for event in events:
                if event.topic in _CALL_TOPICS and not sampled(event.trace_id):
                    continue  # published for another subscriber: no span for it
                if isinstance(event, ev.ModuleStart):
                    self._module_started(event)
                elif isinstance(event, ev.ModuleEnd | ev.ModuleError):
                    self._module_ended(event)
                elif isinstance(event, ev.LMStart):
                    self._lm_started(event)
                elif isinstance(event, ev.LMEnd):
                    self._lm_ended(event)
                elif isinstance(event, ev.LMRetry):
                    self._lm_retried(event)
                elif isinstance(event, ev.RuntimeRestart):
                    self._restart(event)

    def _module_ended(self, event: ev.Event) -> None:
        path: str = getattr(event, "module_path", "")
        trace_id = event.trace_id
        call = self._calls.get(trace_id)
        if call is None:
            return  # started before tracing was on
        found = False
        span = None
        for i in range(len(call.modules) - 1, -1, -1):
            if call.modules[i][0] == path:
                span = call.modules.pop(i)[1]
                found = True
                break
        failed = isinstance(event, ev.ModuleError)
        ends_call = path == call.end_path or (failed and not call.modules)
        if not found and not ends_call:
            return
        if ends_call:
            del self._calls[trace_id]
            if failed:
                key = (trace_id, path.split(".", 1)[0])
                self._failed[key] = self._failed.get(key, 0) + 1
                if len(self._failed) > _MAX_OPEN:
                    self._failed.clear()
        error = event.error_type if isinstance(event, ev.ModuleError) else None
        at = _ns(event.timestamp)
        for s in (span, call.span if ends_call else None):
            if s is not None:
                self._spans.end(s, at, error)

    def _module_started(self, event: ev.Event) -> None:
        path: str = getattr(event, "module_path", "")
        program = path.split(".", 1)[0]
        trace_id = event.trace_id
        at = _ns(event.timestamp)
        call = self._calls.get(trace_id)
        if call is None:
            if len(self._calls) >= _MAX_OPEN:
                self._calls.clear()
            span = self._spans.start(
                f"call {program}",
                SpanKind.SERVER,
                remote_parent_of(trace_id),
                {"dspy_actors.program": program, "dspy_actors.trace_id": trace_id or ""},
                at,
                *self._decided(trace_id),
            )
            retried = self._failed.pop((trace_id, program), 0)
            if retried and span is not None:
                for attributes, when in self._restarts.pop(program, []):
                    self._spans.add_event(span, "restart", attributes, when)
                self._spans.add_event(span, "retry", {"dspy_actors.attempt": retried + 1}, at)
            call = self._calls[trace_id] = _Call(span, program, self._end_path(program))
        if call.span is None:
            call.modules.append((path, None))  # not sampled: only the shape is kept
            return
        parent: OpenSpan = call.span
        for open_path, open_span in reversed(call.modules):
            if open_span is not None and path.startswith(open_path + "."):
                parent = open_span
                break
        span = self._spans.start(
            f"module {path}", SpanKind.INTERNAL, parent, {"dspy_actors.module_path": path}, at
        )
        call.modules.append((path, span))

    def _lm_retried(self, event: ev.LMRetry) -> None:
        spans = self._lm.get((event.trace_id, event.deployment))
        if spans:  # (the latest request of this call on this deployment)
            attributes = {
                "error.type": event.error_type,
                "dspy_actors.retry_delay_s": event.delay_s,
            }
            self._spans.add_event(spans[-1], "retry", attributes, _ns(event.timestamp))

    def _lm_started(self, event: ev.LMStart) -> None:
        call = self._calls.get(event.trace_id)
        parent: OpenSpan | SpanContext | None
        if call is not None:
            if call.span is None:
                return  # the call is not sampled
            parent = call.span
            for _, module_span in reversed(call.modules):
                if module_span is not None:
                    parent = module_span
                    break
        else:
            parent = remote_parent_of(event.trace_id)
        span = self._spans.start(
            f"chat {event.model}",
            SpanKind.CLIENT,
            parent,
            {
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": event.model,
                "gen_ai.provider.name": event.model.split("/", 1)[0],
                "dspy_actors.deployment": event.deployment,
            },
            _ns(event.timestamp),
            *(self._decided(event.trace_id) if call is None else (None, False)),
        )
        if span is None:
            return
        if len(self._lm) >= _MAX_OPEN:
            self._lm.clear()
        self._lm.setdefault((event.trace_id, event.deployment), []).append(span)

    def _lm_ended(self, event: ev.LMEnd) -> None:
        key = (event.trace_id, event.deployment)
        spans = self._lm.get(key)
        if not spans:
            return
        span = spans.pop(0)
        if not spans:
            del self._lm[key]
        attributes = span.attributes
        if event.prompt_tokens is not None:
            attributes["gen_ai.usage.input_tokens"] = event.prompt_tokens
        if event.completion_tokens is not None:
            attributes["gen_ai.usage.output_tokens"] = event.completion_tokens
        if event.finish_reasons:
            attributes["gen_ai.response.finish_reasons"] = list(event.finish_reasons)
        attributes["dspy_actors.cache_hit"] = event.cache_hit
        self._spans.end(span, _ns(event.timestamp), event.error_type)

    def _restart(self, event: ev.RuntimeRestart) -> None:
        match = _PROGRAM_IN_NODE.search(f"{event.supervisor}/{event.child_id}")
        if match is None:
            return
        program = match.group(1)
        attributes: dict[str, Any] = {
            "dspy_actors.supervisor": event.supervisor,
            "dspy_actors.child_id": event.child_id,
            "dspy_actors.restart_count": event.restart_count,
        }
        at = _ns(event.timestamp)
        for call in self._calls.values():
            if call.program == program and call.span is not None:
                self._spans.add_event(call.span, "restart", attributes, at)
        if any(p == program for _, p in self._failed):
            pending = self._restarts.setdefault(program, [])
            pending.append((attributes, at))
            del pending[:-20]


_by_app: dict[int, AppTracing] = {}
_lock = threading.Lock()


def trace_app(app: App, tracer_provider: TracerProvider | None = None) -> AppTracing:
    """Start making spans for ``app`` (with ``tracer_provider``, default: the global one
    set by ``opentelemetry.trace.set_tracer_provider``); stopped by ``close()`` or when the
    app stops. Calling it again for the same app replaces the earlier tracing."""
    with _lock:
        earlier = _by_app.pop(id(app), None)
    if earlier is not None:
        earlier.close()
    tracing = AppTracing(app, tracer_provider)
    with _lock:
        _by_app[id(app)] = tracing
    on_stop(app, tracing.close)
    return tracing
