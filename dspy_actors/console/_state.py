"""What the console shows, kept up to date from the app's events (no polling of the app).

A :class:`ConsoleState` subscribes to the app's event bus (module calls, LM requests,
breaker transitions, dead letters, run progress) and to supervision events, and keeps small
aggregates: per module path the calls, errors by type and recent latencies; per deployment
the requests in flight and the breaker's transitions; per run its progress and scores; a
bounded log of what happened (crashes, restarts, trips, operator actions). Subscribers run
in the event bus's thread; what a page needs is read from here by the server, which is told
which sections changed (``on_change``) so it pushes only those.

Aggregates cost a dict update per event, under one lock per batch of events (the bus
delivers them in batches); the live tree and the figures the app already
keeps (usage, in-flight gates, the LM pool's queue) are read when a section is rendered.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import supervisors
from dspy_actors.redaction import redact_value
from dspy_actors.runtime import _events as ev

if TYPE_CHECKING:
    from dspy_actors.runtime.app import App

__all__ = ["SECTIONS", "ConsoleState"]

SECTIONS = ("tree", "programs", "deployments", "runs", "dead_letters", "activity")

# Latencies kept per module path for p50/p99, and the window calls/s is measured over.
_LATENCY_SAMPLES = 2048
_RATE_WINDOW_S = 10.0
_ACTIVITY_KEPT = 200


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


@dataclass
class _ModuleStats:
    calls: int = 0
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    latencies: collections.deque[float] = field(
        default_factory=lambda: collections.deque(maxlen=_LATENCY_SAMPLES)
    )
    ended_at: collections.deque[float] = field(
        default_factory=lambda: collections.deque(maxlen=100_000)
    )

    def rate(self, now: float) -> float:
        ended = self.ended_at
        while ended and ended[0] < now - _RATE_WINDOW_S:
            ended.popleft()
        return len(ended) / _RATE_WINDOW_S


@dataclass
class _DeploymentStats:
    requests: int = 0
    in_flight: int = 0
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    cache_hits: int = 0
    transitions: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _RunStats:
    kind: str = "run"
    completed: int = 0
    total: int | None = None
    scores: list[tuple[int, float]] = field(default_factory=list)
    message: str = ""
    updated_at: float = 0.0
    state: str = "running"


class ConsoleState:
    """The console's live view of ``app``; call :meth:`close` to unsubscribe."""

    def __init__(self, app: App, on_change: Callable[[str], None] | None = None) -> None:
        self.app = app
        self._on_change = on_change or (lambda _section: None)
        self._lock = threading.Lock()
        self._modules: dict[str, _ModuleStats] = {}
        # Start times of module calls in flight, per (trace id, path): paired with their end.
        self._starts: dict[tuple[str | None, str], list[float]] = {}
        self._deployments: dict[str, _DeploymentStats] = {}
        self._runs: dict[str, _RunStats] = {}
        self._activity: collections.deque[dict[str, Any]] = collections.deque(maxlen=_ACTIVITY_KEPT)
        self._seq = 0
        self._subscriptions = [
            app.events.subscribe("module.*", self._module_events, batch=True),
            app.events.subscribe("lm.*", self._lm_events, batch=True),
            app.subscribe("breaker.transition", self._breaker_event),
            app.subscribe("dead_letter", self._dead_letter_event),
            app.subscribe("run.progress", self._run_event),
        ]
        self._unsubscribe_supervision = supervisors.subscribe(self._supervision_event)
        self._load_kept_actions()

    def _load_kept_actions(self) -> None:
        """Start the activity log with the operators' actions kept in the app's store (the
        ones before this console, or this process, started)."""
        from dspy_actors.console._app_view import action_log

        try:
            kept = action_log(self.app, limit=_ACTIVITY_KEPT // 2)
        except Exception:
            return  # a store that cannot be read now: the live log still works
        for entry in kept:
            del entry["kind"]
            self.record("action", entry.pop("text"), **entry)

    def close(self) -> None:
        for sub in self._subscriptions:
            self.app.events.unsubscribe(sub)
        self._subscriptions = []
        self._unsubscribe_supervision()

    # Events in (the bus's thread, or a supervisor's). -------------------------------------

    def _module_events(self, events: Sequence[ev.Event]) -> None:
        now = time.monotonic()
        with self._lock:
            for event in events:
                self._module_event(event, now)
        self._on_change("programs")  # once per batch: pushes are coalesced anyway

    def _module_event(self, event: ev.Event, now: float) -> None:
        path = getattr(event, "module_path", "")
        key = (event.trace_id, path)
        if isinstance(event, ev.ModuleStart):
            self._starts.setdefault(key, []).append(event.timestamp)
            return
        stats = self._modules.get(path)
        if stats is None:
            stats = self._modules[path] = _ModuleStats()
        started = self._starts.get(key)
        if started:
            stats.latencies.append(max(0.0, event.timestamp - started.pop(0)))
            if not started:
                del self._starts[key]
        stats.calls += 1
        stats.ended_at.append(now)
        if isinstance(event, ev.ModuleError):
            stats.errors[event.error_type or "error"] += 1

    def _lm_events(self, events: Sequence[ev.Event]) -> None:
        with self._lock:
            for event in events:
                deployment = getattr(event, "deployment", "?")
                stats = self._deployments.get(deployment)
                if stats is None:
                    stats = self._deployments[deployment] = _DeploymentStats()
                if isinstance(event, ev.LMStart):
                    stats.in_flight += 1
                elif isinstance(event, ev.LMEnd):
                    stats.in_flight = max(0, stats.in_flight - 1)
                    stats.requests += 1
                    if event.cache_hit:
                        stats.cache_hits += 1
                    if event.error_type is not None:
                        stats.errors[event.error_type] += 1
        self._on_change("deployments")

    def _breaker_event(self, event: ev.BreakerTransition) -> None:
        with self._lock:
            stats = self._deployments.setdefault(event.deployment, _DeploymentStats())
            stats.transitions.append(
                {"at": event.timestamp, "from": event.from_state, "to": event.to_state}
            )
            del stats.transitions[:-20]
        self.record(
            "breaker",
            f"breaker of {event.deployment}: {event.from_state} -> {event.to_state}",
            deployment=event.deployment,
        )
        self._on_change("deployments")

    def _dead_letter_event(self, event: ev.DeadLetterEvent) -> None:
        self.record(
            "dead_letter",
            f"{event.program}: input quarantined after {event.attempts} crashes "
            f"({event.exception_type})",
            dead_letter_id=event.dead_letter_id,
        )
        self._on_change("dead_letters")

    def _run_event(self, event: ev.RunProgress) -> None:
        with self._lock:
            run = self._runs.setdefault(event.run_id, _RunStats())
            run.kind = event.kind
            run.completed = event.completed
            run.total = event.total
            run.message = event.message
            run.updated_at = event.timestamp
            if event.score is not None:
                run.scores.append((event.completed, event.score))
                del run.scores[:-500]
        self._on_change("runs")

    def _supervision_event(self, event: supervisors.SupervisorEvent) -> None:
        name = self.app.name
        if not (event.supervisor == name or event.supervisor.startswith(name + "/")):
            return
        where = f"{event.supervisor}/{event.child_id}" if event.child_id else event.supervisor
        if event.kind == "child_exited" and event.reason:
            self.record("crash", f"{where} exited: {event.reason}", node=where)
        elif event.kind == "child_restarted":
            self.record("restart", f"{where} restarted (#{event.restart_count})", node=where)
        elif event.kind == "escalated":
            self.record("escalation", f"{event.supervisor} gave up: {event.reason}", node=where)
        elif event.kind == "child_started" and event.supervisor == f"{name}/modules":
            # A program served, or a new version of one (an upgrade), as it happens.
            self.record("serve", f"serving {event.child_id}", node=where)
            self._on_change("programs")
        self._on_change("tree")

    # The activity log. ------------------------------------------------------------------

    def record(self, kind: str, text: str, **details: Any) -> dict[str, Any]:
        """Add an entry to the activity log (crashes, restarts, trips, operator actions)."""
        with self._lock:
            self._seq += 1
            raw = {"seq": self._seq, "at": time.time(), "kind": kind, "text": text, **details}
            entry: dict[str, Any] = redact_value(raw)
            self._activity.append(entry)
        self._on_change("activity")
        return entry

    # Sections out (JSON data; every string redacted). -----------------------------------

    def section(self, name: str) -> Any:
        render: dict[str, Callable[[], Any]] = {
            "tree": self._tree,
            "programs": self._programs,
            "deployments": self._deployments_view,
            "runs": self._runs_view,
            "dead_letters": self._dead_letters,
            "activity": self._activity_view,
        }
        if name not in render:
            raise KeyError(f"no console section {name!r}; sections: {', '.join(SECTIONS)}")
        return redact_value(render[name]())

    def snapshot(self) -> dict[str, Any]:
        return {name: self.section(name) for name in SECTIONS}

    def _tree(self) -> Any:
        try:
            return self.app.tree().to_dict()
        except Exception as error:  # the tree is restarting: say so, do not fail the page
            return {"id": self.app.name, "kind": "supervisor", "state": f"unavailable: {error}"}

    def _programs(self) -> list[dict[str, Any]]:
        from dspy_actors.console._app_view import served_programs

        now = time.monotonic()
        with self._lock:
            modules: dict[str, dict[str, Any]] = {
                path: {
                    "calls": s.calls,
                    "calls_per_s": round(s.rate(now), 3),
                    "p50_s": _percentile(list(s.latencies), 0.5),
                    "p99_s": _percentile(list(s.latencies), 0.99),
                    "errors": dict(s.errors),
                }
                for path, s in self._modules.items()
            }
        out = []
        for program in served_programs(self.app):
            mine = {
                p: m
                for p, m in modules.items()
                if p == program["name"] or p.startswith(program["name"] + ".")
            }
            # A module program's calls are its root's; a pipeline's, its first step's.
            entry_path = program["entry_path"]
            entry = mine.get(entry_path, {})
            errors: collections.Counter[str] = collections.Counter()
            for m in mine.values():
                errors.update(m["errors"])
            out.append(
                {
                    **program,
                    "calls": entry.get("calls", 0),
                    "calls_per_s": entry.get("calls_per_s", 0.0),
                    "p50_s": entry.get("p50_s"),
                    "p99_s": entry.get("p99_s"),
                    "errors": dict(errors),
                    "modules": dict(sorted(mine.items())),
                }
            )
        return out

    def _deployments_view(self) -> list[dict[str, Any]]:
        from dspy_actors.console._app_view import deployments

        with self._lock:
            seen = {
                key: {
                    "requests": s.requests,
                    "in_flight": s.in_flight,
                    "cache_hits": s.cache_hits,
                    "errors": dict(s.errors),
                    "transitions": list(s.transitions),
                }
                for key, s in self._deployments.items()
            }
        return deployments(self.app, seen)

    def _runs_view(self) -> list[dict[str, Any]]:
        from dspy_actors.runtime.runs import active_run_status

        with self._lock:
            runs = {run_id: (r, list(r.scores)) for run_id, r in self._runs.items()}
        out = []
        for run_id, (run, scores) in runs.items():
            status = active_run_status(self.app, run_id)
            if status is not None:
                run.state = status.state
            elif run.state == "running":
                run.state = "finished"
            out.append(
                {
                    "run_id": run_id,
                    "kind": run.kind,
                    "state": run.state,
                    "completed": run.completed,
                    "total": run.total,
                    "message": run.message,
                    "scores": scores,
                    "best_score": max((s for _, s in scores), default=None),
                    "error": None if status is None else status.error,
                }
            )
        return out

    def _dead_letters(self) -> list[dict[str, Any]]:
        from dspy_actors.console._app_view import dead_letter_summaries

        return dead_letter_summaries(self.app)

    def _activity_view(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._activity)
