"""Which calls are traced, decided on the call path from the call's trace id alone.

The runtime asks ``sampler(trace_id)`` where a call's events would be built (a module actor
accepting or ending it, an LM request starting); an unsampled call then builds and
publishes nothing for tracing. The answer must be the same every time for the same call,
so it depends on the trace id only: a call of our own gets an OpenTelemetry trace id made
from its runtime trace id (:meth:`CallSampler.otel_trace_id`), and the provider's sampler
decides on that, as it would on a span's; a call continuing a W3C ``traceparent`` is
decided with the caller's span as the parent (``ParentBased`` follows the caller's flag).

For the samplers services run (``ALWAYS_ON``/``ALWAYS_OFF``, ``TraceIdRatioBased``, either
under ``ParentBased``) our own calls are decided in a hash and a comparison, without
calling the SDK; other samplers are asked once per call and the answer kept a while.
"""

from __future__ import annotations

import hashlib
import re

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
from opentelemetry.sdk.trace.sampling import (
    Decision,
    ParentBased,
    Sampler,
    StaticSampler,
    TraceIdRatioBased,
)
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags, TracerProvider

__all__ = ["CallSampler", "remote_parent_of"]

_MASK64 = (1 << 64) - 1
# The runtime trace id of a call that continues a W3C trace: "<trace-id>-<parent-span-id>".
# (A caller that did not sample its trace adds its flags: "<trace-id>-<span-id>-00".)
_W3C_TRACE_ID = re.compile(r"([0-9a-f]{32})-([0-9a-f]{16})(?:-([0-9a-f]{2}))?")
# Answers kept for calls the SDK's sampler was asked about (cleared when full).
_KEPT = 4096


def remote_parent_of(trace_id: str | None) -> SpanContext | None:
    """The caller's span, for a trace id from a ``traceparent``; None for our own trace."""
    match = _W3C_TRACE_ID.fullmatch(trace_id or "")
    if match is None:
        return None
    return SpanContext(
        trace_id=int(match.group(1), 16),
        span_id=int(match.group(2), 16),
        is_remote=True,
        trace_flags=TraceFlags(int(match.group(3) or "01", 16)),
    )


class CallSampler:
    """``sampler(trace_id)``: whether the call ``trace_id`` is traced (module docstring)."""

    def __init__(self, provider: TracerProvider) -> None:
        self._sdk = provider if isinstance(provider, SdkTracerProvider) else None
        self._disabled = bool(getattr(provider, "_disabled", False))
        self._kept: dict[str, bool] = {}
        # Our own calls' fast answer: every call (True), none (False), a ratio of them (the
        # bound on the low 64 bits, as TraceIdRatioBased compares), or ask the SDK (None).
        self._own: bool | int | None = True
        if self._disabled:
            self._own = False
        elif self._sdk is not None:
            self._own = _fast_answer(self._sdk.sampler)

    def __call__(self, trace_id: str | None) -> bool:
        if trace_id is None or self._disabled:
            return False
        if self._sdk is None:
            return True  # another provider: its tracer decides, on live spans
        own = self._own
        if own is True or own is False:
            if len(trace_id) < 49 or trace_id[32] != "-":  # not a W3C caller's
                return own
        elif own is not None and (len(trace_id) < 49 or trace_id[32] != "-"):
            return hash(trace_id) & _MASK64 < own
        kept = self._kept.get(trace_id)
        if kept is None:
            kept = self._ask(trace_id)
            if len(self._kept) >= _KEPT:
                self._kept.clear()
            self._kept[trace_id] = kept
        return kept

    def _ask(self, trace_id: str) -> bool:
        assert self._sdk is not None
        parent = remote_parent_of(trace_id)
        context = (
            trace.set_span_in_context(NonRecordingSpan(parent)) if parent is not None else None
        )
        otel_id = parent.trace_id if parent is not None else self.otel_trace_id(trace_id)
        result = self._sdk.sampler.should_sample(context, otel_id, "call", SpanKind.SERVER)
        return result.decision is Decision.RECORD_AND_SAMPLE

    @staticmethod
    def otel_trace_id(trace_id: str) -> int:
        """The OpenTelemetry trace id of a call of our own: its low 64 bits (what ratio
        samplers look at) from the trace id's hash, the high ones from a digest of it."""
        high = int.from_bytes(hashlib.blake2b(trace_id.encode(), digest_size=8).digest())
        return (high << 64) | (hash(trace_id) & _MASK64) or 1


def _fast_answer(sampler: Sampler) -> bool | int | None:
    """The answer for calls of our own (no parent) without asking ``sampler``, if known."""
    if isinstance(sampler, ParentBased):
        sampler = getattr(sampler, "_root", sampler)  # no parent: the root sampler decides
    if isinstance(sampler, StaticSampler):
        return getattr(sampler, "_decision", None) is Decision.RECORD_AND_SAMPLE
    if type(sampler) is TraceIdRatioBased:  # (a subclass may decide otherwise)
        return int(sampler.bound)
    return None
