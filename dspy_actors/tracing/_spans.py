"""How tracing makes its spans: finished ``ReadableSpan``s handed to the SDK provider's
span processors (cheap: ids, times and attributes recorded as plain data, no live span
objects, no locks), or live spans through any other provider's tracer."""

from __future__ import annotations

from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import Event as SpanEvent
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
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

__all__ = ["OpenSpan", "Spans"]


class OpenSpan:
    """A span being recorded: its name, ids, attributes and events until it ends (then a
    finished ``ReadableSpan``), or the live span of a provider that is not the SDK's."""

    __slots__ = ("attributes", "context", "events", "kind", "live", "name", "parent", "start")

    def __init__(
        self,
        name: str,
        kind: SpanKind,
        context: SpanContext,
        parent: SpanContext | None,
        attributes: dict[str, Any],
        start: int,
        live: Span | None = None,
    ) -> None:
        self.name = name
        self.kind = kind
        self.context = context
        self.parent = parent
        self.attributes = attributes
        self.events: list[SpanEvent] = []
        self.start = start
        self.live = live


_NO_ERROR = Status(StatusCode.UNSET)


class Spans:
    """Makes the spans, with the SDK's provider cheaply (see the module docstring) or with
    any other provider's tracer. Used in one thread at a time (under AppTracing's lock)."""

    def __init__(self, provider: TracerProvider) -> None:
        self.tracer = provider.get_tracer("dspy_actors")
        # The SDK keeps its span processors in a private attribute; without it (another
        # SDK version, another provider) spans go through the tracer, as any library's do.
        processor = getattr(provider, "_active_span_processor", None)
        self._sdk = provider if isinstance(provider, SdkTracerProvider) else None
        self._processor = processor if self._sdk is not None else None
        self._scope = InstrumentationScope("dspy_actors")
        self.disabled = bool(getattr(provider, "_disabled", False))

    def start(
        self,
        name: str,
        kind: SpanKind,
        parent: OpenSpan | SpanContext | None,
        attributes: dict[str, Any],
        start: int,
        trace_id: int | None = None,
        sampled: bool = False,
    ) -> OpenSpan | None:
        """A new span under ``parent`` (an open span, a remote caller's span, or None for a
        root: in trace ``trace_id``, or a new one); None when the sampler drops it (asked
        for roots and remote parents, unless ``sampled``: the call was decided already)."""
        if self.disabled:
            return None
        if self._sdk is None or self._processor is None:
            return self._start_live(name, kind, parent, attributes, start)
        sdk = self._sdk
        if isinstance(parent, OpenSpan):  # a child of a sampled span: sampled too
            ctx = parent.context
            context = SpanContext(
                ctx.trace_id, sdk.id_generator.generate_span_id(), False, ctx.trace_flags
            )
            return OpenSpan(name, kind, context, ctx, attributes, start)
        if parent is not None:
            trace_id = parent.trace_id
        elif trace_id is None:
            trace_id = sdk.id_generator.generate_trace_id()
        if sampled:
            flags = TraceFlags(TraceFlags.SAMPLED)
            trace_state = parent.trace_state if parent is not None else None
            context = SpanContext(
                trace_id, sdk.id_generator.generate_span_id(), False, flags, trace_state
            )
            return OpenSpan(name, kind, context, parent, attributes, start)
        parent_context = (
            trace.set_span_in_context(NonRecordingSpan(parent)) if parent is not None else None
        )
        result = sdk.sampler.should_sample(parent_context, trace_id, name, kind, attributes)
        if result.decision is Decision.DROP:
            return None
        keep = result.decision is Decision.RECORD_AND_SAMPLE
        flags = TraceFlags(TraceFlags.SAMPLED if keep else TraceFlags.DEFAULT)
        context = SpanContext(
            trace_id,
            sdk.id_generator.generate_span_id(),
            False,
            flags,
            result.trace_state,
        )
        if result.attributes:
            attributes = {**attributes, **result.attributes}
        return OpenSpan(name, kind, context, parent, attributes, start)

    def _start_live(
        self,
        name: str,
        kind: SpanKind,
        parent: OpenSpan | SpanContext | None,
        attributes: dict[str, Any],
        start: int,
    ) -> OpenSpan | None:
        if isinstance(parent, OpenSpan) and parent.live is not None:
            context = trace.set_span_in_context(parent.live)
        elif isinstance(parent, SpanContext):
            context = trace.set_span_in_context(NonRecordingSpan(parent))
        else:
            context = Context()
        span = self.tracer.start_span(
            name, context=context, kind=kind, attributes=attributes, start_time=start
        )
        if not span.is_recording():
            return None
        return OpenSpan(name, kind, span.get_span_context(), None, attributes, start, live=span)

    def add_event(self, span: OpenSpan, name: str, attributes: dict[str, Any], at: int) -> None:
        if span.live is not None:
            span.live.add_event(name, attributes, timestamp=at)
        else:
            span.events.append(SpanEvent(name, attributes, at))

    def end(self, span: OpenSpan, end: int, error: str | None = None) -> None:
        """End ``span`` at ``end`` (ns); ``error``: the error type it failed with."""
        if error:
            span.attributes["error.type"] = error
            self.add_event(span, "exception", {"exception.type": error}, end)
        status = Status(StatusCode.ERROR, error) if error else _NO_ERROR
        if span.live is not None:
            span.live.set_attributes(span.attributes)
            span.live.set_status(status)
            span.live.end(end_time=end)
            return
        if self._processor is None or self._sdk is None:
            return
        self._processor.on_end(
            ReadableSpan(
                span.name,
                context=span.context,
                parent=span.parent,
                resource=self._sdk.resource,
                attributes=span.attributes,
                events=span.events,
                kind=span.kind,
                status=status,
                start_time=span.start,
                end_time=end,
                instrumentation_scope=self._scope,
            )
        )
