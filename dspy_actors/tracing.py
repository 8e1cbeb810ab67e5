"""OpenTelemetry spans of a running app: one per call, per module step, per LM request.

Off unless configured: ``trace_app(app, tracer_provider)`` subscribes to the app's events
and turns them into spans (started and ended at the events' own timestamps), so the
runtime's hot path is the same with tracing on or off, apart from publishing the events.

- ``call <program>``: a call of a served program (the span a caller's trace continues);
- ``module <path>``: each module (or pipeline step) that handled it, nested by path;
- ``chat <model>``: each LM request, with the GenAI semantic conventions
  (``gen_ai.operation.name``, ``gen_ai.request.model``, ``gen_ai.usage.input_tokens``,
  ``gen_ai.usage.output_tokens``, ``gen_ai.response.finish_reasons``, ``error.type``).

A crash retried by an idempotent program is a ``retry`` event on the new call span; an
actor restarted while a call of its program is open is a ``restart`` event on it.

W3C trace context: ``trace_id_from_traceparent(header)`` turns an incoming
``traceparent`` header into the runtime's trace id; pass it as ``call_with(...,
trace_id=...)``. The id travels in the call's context through every actor hop and the LM
workers, and every span of the call is created in the caller's trace, under its span.
"""

from __future__ import annotations

import re
import threading
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import (
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TracerProvider,
)

from dspy_actors._stop_hooks import forget_stop_hook, on_stop
from dspy_actors.runtime import events as ev

if TYPE_CHECKING:
    from dspy_actors.runtime.app import App

__all__ = ["AppTracing", "trace_app", "trace_id_from_traceparent", "traceparent_of"]

_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
# The runtime trace id of a call that continues a W3C trace: "<trace-id>-<parent-span-id>".
_W3C_TRACE_ID = re.compile(r"([0-9a-f]{32})-([0-9a-f]{16})")
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
    version, trace_hex, span_hex, _flags = match.groups()
    if version == "ff" or set(trace_hex) == {"0"} or set(span_hex) == {"0"}:
        return None
    return f"{trace_hex}-{span_hex}"


def traceparent_of(span: Span) -> str:
    """The ``traceparent`` header naming ``span`` (to pass a trace on to another service)."""
    ctx = span.get_span_context()
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def _remote_parent(trace_id: str | None) -> Context:
    """The caller's span as the parent context, for a trace id from a ``traceparent``."""
    match = _W3C_TRACE_ID.fullmatch(trace_id or "")
    if match is None:
        return Context()  # a trace of our own: the call span is a root
    remote = SpanContext(
        trace_id=int(match.group(1), 16),
        span_id=int(match.group(2), 16),
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )
    return trace.set_span_in_context(NonRecordingSpan(remote))


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


@dataclass
class _Call:
    span: Span
    program: str
    end_path: str
    # Open module spans of this call, in start order: (path, span).
    modules: list[tuple[str, Span]] = field(default_factory=list)


class AppTracing:
    """Spans of one app from its events; :meth:`close` stops tracing (see the module doc)."""

    def __init__(self, app: App, tracer_provider: TracerProvider | None = None) -> None:
        provider = tracer_provider or trace.get_tracer_provider()
        self.tracer = provider.get_tracer("dspy_actors")
        self._app = weakref.ref(app)
        self._lock = threading.Lock()
        self._calls: dict[str | None, _Call] = {}
        # Calls of a trace that ended in an error, per program: the next is a retry.
        self._failed: dict[tuple[str | None, str], int] = {}
        self._lm: dict[tuple[str | None, str], list[Span]] = {}
        self._shapes: dict[str, str] = {}
        # Restarts of a program's actors since its last failed call: the retry's call span
        # gets them as events (the failed call's span has ended by the time they happen).
        self._restarts: dict[str, list[tuple[dict[str, Any], int]]] = {}
        self._subscriptions = [
            app.subscribe("module.*", self._module_event),
            app.subscribe("lm.*", self._lm_event),
            app.subscribe("runtime.restart", self._restart),
        ]

    def close(self) -> None:
        """Stop making spans; spans still open are ended now."""
        app = self._app()
        if app is not None:
            for sub in self._subscriptions:
                app.events.unsubscribe(sub)
            forget_stop_hook(app, self.close)
            with _lock:
                if _by_app.get(id(app)) is self:
                    del _by_app[id(app)]
        self._subscriptions = []
        with self._lock:
            open_spans = [c.span for c in self._calls.values()]
            open_spans += [s for c in self._calls.values() for _, s in c.modules]
            open_spans += [s for spans in self._lm.values() for s in spans]
            self._calls.clear()
            self._lm.clear()
        for span in open_spans:
            span.end()

    # Which module path ends a call of a program: its root, or a pipeline's last step.
    def _end_path(self, program: str) -> str:
        known = self._shapes.get(program)
        if known is not None:
            return known
        app = self._app()
        end = program
        if app is not None:
            from dspy_actors.console.app_view import call_end_path

            end = call_end_path(app, program)
        self._shapes[program] = end
        return end

    # Subscribers (the event bus's thread). -----------------------------------------------

    def _module_event(self, event: ev.Event) -> None:
        path: str = getattr(event, "module_path", "")
        program = path.split(".", 1)[0]
        trace_id = event.trace_id
        with self._lock:
            if isinstance(event, ev.ModuleStart):
                self._module_started(trace_id, program, path, event.timestamp)
                return
            call = self._calls.get(trace_id)
            if call is None:
                return  # started before tracing was on
            span = None
            for i in range(len(call.modules) - 1, -1, -1):
                if call.modules[i][0] == path:
                    span = call.modules.pop(i)[1]
                    break
            failed = isinstance(event, ev.ModuleError)
            ends_call = path == call.end_path or (failed and not call.modules)
            if ends_call:
                del self._calls[trace_id]
                if failed:
                    key = (trace_id, program)
                    self._failed[key] = self._failed.get(key, 0) + 1
                    if len(self._failed) > _MAX_OPEN:
                        self._failed.clear()
        error = event.error_type if isinstance(event, ev.ModuleError) else None
        ended = [s for s in (span, call.span if ends_call else None) if s is not None]
        for s in ended:
            if error:
                s.set_status(Status(StatusCode.ERROR, error))
                s.set_attribute("error.type", error)
                s.add_event("exception", {"exception.type": error}, timestamp=_ns(event.timestamp))
            s.end(end_time=_ns(event.timestamp))

    def _module_started(self, trace_id: str | None, program: str, path: str, at: float) -> None:
        call = self._calls.get(trace_id)
        if call is None:
            if len(self._calls) >= _MAX_OPEN:
                self._calls.clear()
            span = self.tracer.start_span(
                f"call {program}",
                context=_remote_parent(trace_id),
                kind=SpanKind.SERVER,
                attributes={"dspy_actors.program": program, "dspy_actors.trace_id": trace_id or ""},
                start_time=_ns(at),
            )
            retried = self._failed.pop((trace_id, program), 0)
            if retried:
                for attributes, when in self._restarts.pop(program, []):
                    span.add_event("restart", attributes, timestamp=when)
                span.add_event("retry", {"dspy_actors.attempt": retried + 1}, timestamp=_ns(at))
            call = self._calls[trace_id] = _Call(span, program, self._end_path(program))
        parent = call.span
        for open_path, open_span in reversed(call.modules):
            if path.startswith(open_path + "."):
                parent = open_span
                break
        span = self.tracer.start_span(
            f"module {path}",
            context=trace.set_span_in_context(parent),
            kind=SpanKind.INTERNAL,
            attributes={"dspy_actors.module_path": path},
            start_time=_ns(at),
        )
        call.modules.append((path, span))

    def _lm_event(self, event: ev.Event) -> None:
        deployment: str = getattr(event, "deployment", "")
        key = (event.trace_id, deployment)
        if isinstance(event, ev.LMStart):
            with self._lock:
                call = self._calls.get(event.trace_id)
                if call is not None:
                    parent = call.modules[-1][1] if call.modules else call.span
                    context = trace.set_span_in_context(parent)
                else:
                    context = _remote_parent(event.trace_id)
                span = self.tracer.start_span(
                    f"chat {event.model}",
                    context=context,
                    kind=SpanKind.CLIENT,
                    attributes={
                        "gen_ai.operation.name": "chat",
                        "gen_ai.request.model": event.model,
                        "gen_ai.provider.name": event.model.split("/", 1)[0],
                        "dspy_actors.deployment": deployment,
                    },
                    start_time=_ns(event.timestamp),
                )
                if len(self._lm) >= _MAX_OPEN:
                    self._lm.clear()
                self._lm.setdefault(key, []).append(span)
            return
        if not isinstance(event, ev.LMEnd):
            return
        with self._lock:
            spans = self._lm.get(key)
            if not spans:
                return
            span = spans.pop(0)
            if not spans:
                del self._lm[key]
        if event.prompt_tokens is not None:
            span.set_attribute("gen_ai.usage.input_tokens", event.prompt_tokens)
        if event.completion_tokens is not None:
            span.set_attribute("gen_ai.usage.output_tokens", event.completion_tokens)
        if event.finish_reasons:
            span.set_attribute("gen_ai.response.finish_reasons", list(event.finish_reasons))
        span.set_attribute("dspy_actors.cache_hit", event.cache_hit)
        if event.error_type is not None:
            span.set_attribute("error.type", event.error_type)
            span.set_status(Status(StatusCode.ERROR, event.error_type))
        span.end(end_time=_ns(event.timestamp))

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
        with self._lock:
            spans = [c.span for c in self._calls.values() if c.program == program]
            if any(p == program for _, p in self._failed):
                pending = self._restarts.setdefault(program, [])
                pending.append((attributes, _ns(event.timestamp)))
                del pending[:-20]
        for span in spans:
            span.add_event("restart", attributes, timestamp=_ns(event.timestamp))


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
