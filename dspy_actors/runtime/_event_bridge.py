"""EventBridge: what the app's parts report, published as typed events on its bus.

Module actors and the LM pool publish typed events themselves (through
``module_publisher``/``lm_publisher``, None while nobody needs the call's events, keeping
the hot path free: module calls and LM requests are counted without events, in the app's
``call_stats`` and ``lm_counts``, runtime/_call_stats.py).
Circuit breakers and the supervision tree report in their own terms (the ``lm`` and
``supervisors`` layers know no runtime events); this turns those reports into the events
users subscribe to (docs/runtime.md lists them). It also remembers the root's last crash
reasons, which an app that exited reports.
"""

from __future__ import annotations

import collections
from collections.abc import Callable

import supervisors
from dspy_actors.lm._breaker import BreakerTransition as BreakerChange
from dspy_actors.runtime import _events as ev
from dspy_actors.runtime._call_stats import LMCounts


class LMReports:
    """Where the LM pool reports its requests (an ``LMPublisher``): each is counted in
    ``counts`` where it ends; ``reports(trace_id)`` is how to publish its ``lm.*`` events,
    or None while nobody needs them (``EventBus.call_publisher``)."""

    __slots__ = ("counts", "events")

    def __init__(self, events: ev.EventBus, counts: LMCounts) -> None:
        self.events = events
        self.counts = counts

    def __call__(self, trace_id: str | None) -> Callable[[ev.Event], None] | None:
        return self.events.call_publisher("lm", trace_id)


class EventBridge:
    """Publishes an app's breaker and supervision reports on its ``EventBus``."""

    def __init__(
        self,
        app_name: str,
        events: ev.EventBus,
        on_modules_restarted: Callable[[], object],
        lm_counts: LMCounts | None = None,
    ) -> None:
        self.app_name = app_name
        self.events = events
        self._on_modules_restarted = on_modules_restarted
        # What the LM pool reports each request to: counted, and published while needed.
        self.lm_publisher = LMReports(events, LMCounts() if lm_counts is None else lm_counts)
        # The last crash reasons of the root's children: what an exited app reports.
        self.recent_crashes: collections.deque[str] = collections.deque(maxlen=5)

    def module_publisher(self, trace_id: str | None) -> Callable[[ev.Event], None] | None:
        """How to publish the module events of the call ``trace_id``, or None when nobody
        needs them (``EventBus.call_publisher``)."""
        return self.events.call_publisher("module", trace_id)

    def breaker_transition(self, transition: BreakerChange) -> None:
        """A circuit breaker changed state (its ``on_transition`` hook)."""
        self.events.publish(ev.BreakerTransition.of(transition))

    def supervision_event(self, event: supervisors.SupervisorEvent) -> None:
        """A supervision event of any tree: this app's become runtime events."""
        name = self.app_name
        if not (event.supervisor == name or event.supervisor.startswith(name + "/")):
            return
        if event.kind == "child_exited" and event.reason and event.supervisor == name:
            self.recent_crashes.append(f"{event.child_id}: {event.reason}")
        if event.kind == "child_restarted":
            if event.supervisor == name and event.child_id == "modules":
                # A DynamicSupervisor comes back empty: serve every program again.
                self._on_modules_restarted()
            if self.events.subscriptions():
                self.events.publish(
                    ev.RuntimeRestart(
                        supervisor=event.supervisor,
                        child_id=event.child_id or "",
                        restart_count=event.restart_count,
                    )
                )
        elif event.kind == "escalated":
            self.events.publish(
                ev.RuntimeEscalation(
                    supervisor=event.supervisor,
                    child_id=event.child_id or "",
                    reason=event.reason or "",
                )
            )
