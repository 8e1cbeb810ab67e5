"""What the console shows, kept up to date from the app's events (no polling of the app).

A :class:`ConsoleState` subscribes to the app's event bus for what is rare (breaker
transitions, dead letters, run progress) and to supervision events, and keeps small
aggregates: per deployment the breaker's transitions; per run its progress and scores; a
bounded log of what happened (crashes, restarts, trips, operator actions). Subscribers run
in the event bus's thread; what a page needs is read from here by the server, which is
told which sections changed (``on_change``) so it pushes only those.

Module calls and LM requests need no event: the app counts them where they are answered
(its ``call_stats``: calls, errors by type, recent latencies per module path; its
``lm_counts``: requests, errors, cache hits per deployment), read when the programs and
deployments sections are rendered; the server looks once a second whether calls or
requests ended (:meth:`ConsoleState.calls_changed`, :meth:`ConsoleState.requests_changed`)
and pushes those sections then, at its own rate. The live tree and the figures the app
already keeps (usage, in-flight gates, the LM pool's queue and requests in flight) are
read when a section is rendered.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import supervisors
from dspy_actors.redaction import redact_value
from dspy_actors.runtime import _events as ev

if TYPE_CHECKING:
    from dspy_actors.runtime.app import App

__all__ = ["SECTIONS", "ConsoleState"]

SECTIONS = ("tree", "programs", "deployments", "runs", "dead_letters", "activity")

# The window calls/s is measured over (from the call counts seen at each render).
_RATE_WINDOW_S = 10.0
_ACTIVITY_KEPT = 200


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


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
        # (when, calls ended) per module path, at each render within the rate's window.
        self._seen_calls: dict[str, collections.deque[tuple[float, int]]] = {}
        self._calls_pushed = 0
        self._requests_pushed: tuple[int, dict[str, int]] = (0, {})
        # Each deployment's recent breaker transitions (from events: they are rare).
        self._transitions: dict[str, list[dict[str, Any]]] = {}
        self._runs: dict[str, _RunStats] = {}
        self._activity: collections.deque[dict[str, Any]] = collections.deque(maxlen=_ACTIVITY_KEPT)
        self._seq = 0
        self._subscriptions = [
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

    def calls_changed(self) -> bool:
        """True if module calls ended since the last time this said so (the server asks
        at its own rate, then pushes the programs section)."""
        ended = self.app.call_stats.calls_ended()
        if ended == self._calls_pushed:
            return False
        self._calls_pushed = ended
        return True

    def requests_changed(self) -> bool:
        """True if LM requests ended, or those in flight changed, since the last time this
        said so (the server asks at its own rate, then pushes the deployments section)."""
        now = (self.app.lm_counts.ended_so_far, self.app.dispatcher.stats()["busy_by_deployment"])
        if now == self._requests_pushed:
            return False
        self._requests_pushed = now
        return True

    def _rate(self, path: str, calls: int, now: float) -> float:
        """Calls/s of ``path`` over the window, from the counts seen at earlier renders."""
        seen = self._seen_calls.get(path)
        if seen is None:
            seen = self._seen_calls[path] = collections.deque()
        while len(seen) > 1 and seen[1][0] <= now - _RATE_WINDOW_S:
            seen.popleft()
        seen.append((now, calls))
        first_at, first_calls = seen[0]
        elapsed = now - first_at
        return (calls - first_calls) / elapsed if elapsed > 0 else 0.0

    def _breaker_event(self, event: ev.BreakerTransition) -> None:
        with self._lock:
            transitions = self._transitions.setdefault(event.deployment, [])
            transitions.append(
                {"at": event.timestamp, "from": event.from_state, "to": event.to_state}
            )
            del transitions[:-20]
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
        totals = self.app.call_stats.totals()
        with self._lock:
            modules: dict[str, dict[str, Any]] = {
                path: {
                    "calls": t.calls,
                    "calls_per_s": round(self._rate(path, t.calls, now), 3),
                    "p50_s": _percentile(t.recent, 0.5),
                    "p99_s": _percentile(t.recent, 0.99),
                    "errors": dict(t.errors),
                }
                for path, t in totals.items()
                if t.calls
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
            transitions = {key: list(t) for key, t in self._transitions.items()}
        return deployments(self.app, transitions)

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
