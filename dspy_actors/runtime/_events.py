"""The event bus: what the runtime reports (module and LM calls, restarts, breakers, dead
letters, run progress), published as small frozen dataclasses and delivered by topic.

    bus = EventBus.start()
    sub = bus.subscribe("lm.*", lambda e: print(e.topic, e.latency_s))
    bus.subscribe("*", structlog_subscriber("json"))
    bus.publish(LMEnd(deployment="local", model="m", latency_s=0.12, trace_id="t1"))
    bus.flush(timeout=1.0)
    bus.stop()

Delivery: ``publish`` never blocks and never raises (an event that cannot be delivered --
bus stopped, or too far behind -- is counted in ``dropped``; one whose topic no subscriber
matches is not even queued). It appends the event to a queue the bus actor drains, waking
the actor only when it is not already awake, so a burst of events costs one wake-up, not one
actor message each. While events come fast (the bus is woken within ``linger_s``, 5 ms, of
its last drain), it lingers that long before draining, so the events published meanwhile
(the next sampled calls', say) join the same drain: it drains at most ~200 times a second
however many events arrive, and an event waits at most that long (``flush`` and ``stop``
cut the linger short); an event that comes alone is delivered at once. Subscribers run one
at a time in the bus actor's thread, in publish order per publishing thread; a subscriber
that raises is logged and the others still get the event. Keep them short: a slow
subscriber delays every other one. A subscriber made with ``subscribe(..., batch=True)``
gets a list of the events drained together (aggregates then take their lock once per
batch, not once per event).

Subscriptions belong to the handle, not to the actor: when the bus actor is restarted by its
supervisor, the new one delivers to the same subscribers.

Call events (``module.*``, ``lm.*``) are built only for calls someone needs: while a
subscriber takes them for every call, every call publishes them; a subscription made with
``sampled_calls=True`` (tracing's) gets those of the calls the bus's ``call_sampler`` picks,
and no event at all is built for the others. A sampled call's events are queued without
waking the bus (nothing but an append on the call's path): a timer wakes it every 20 ms
while they come, so they are delivered in batches, at most that much later. Counts of every
call do not need events: the runtime keeps them where calls are answered
(``runtime/_call_stats.py``).

Patterns: an exact topic (``"lm.end"``), a prefix wildcard (``"lm.*"``: every topic starting
with ``"lm."``), or ``"*"`` (everything).

Over 400 lines: the event vocabulary users subscribe to (half the file: the typed events)
and the bus that delivers it belong together.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Literal, Self, TextIO

import pykka
import structlog

import supervisors
from dspy_actors import redaction
from dspy_actors.lm import _breaker as breaker
from dspy_actors.lm._breaker import BreakerState
from dspy_actors.waiting import timers
from supervisors import ChildSpec, Registry, SupervisedActor

__all__ = [
    "BreakerTransition",
    "Callback",
    "DeadLetterEvent",
    "Event",
    "EventBus",
    "EventBusActor",
    "LMEnd",
    "LMRetry",
    "LMStart",
    "ModuleEnd",
    "ModuleError",
    "ModuleStart",
    "RunProgress",
    "RuntimeEscalation",
    "RuntimeRestart",
    "Subscription",
    "callback_subscriber",
    "structlog_subscriber",
]

_log = redaction.get_logger("dspy_actors.runtime.events")

# ------------------------------------------------------------------------------- events

# kw_only: the base fields have defaults, so subclasses could not add required fields
# positionally after them. Slots and no pydantic: these are built on every call.


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Base of every event. ``topic`` is fixed per class; ``timestamp`` is epoch seconds.

    Subclass it (with the same ``dataclass(frozen=True, slots=True, kw_only=True)``) and set
    ``topic`` to publish events of your own.
    """

    topic: ClassVar[str] = "event"
    level: ClassVar[str] = "info"
    trace_id: str | None = None
    timestamp: float = field(default_factory=time.time)

    def log_level(self) -> str:
        """The level a log line for this event gets (``structlog_subscriber``)."""
        return self.level


@dataclass(frozen=True, slots=True, kw_only=True)
class ModuleStart(Event):
    """A module instance started handling a call."""

    topic: ClassVar[str] = "module.start"
    module_path: str
    module_type: str = ""
    call_id: str = ""
    inputs: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class ModuleEnd(Event):
    """A module call finished with outputs."""

    topic: ClassVar[str] = "module.end"
    module_path: str
    module_type: str = ""
    call_id: str = ""
    latency_s: float = 0.0
    outputs: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ModuleError(Event):
    """A module call failed (``attempt`` counts tries of this input so far)."""

    topic: ClassVar[str] = "module.error"
    level: ClassVar[str] = "error"
    module_path: str
    module_type: str = ""
    call_id: str = ""
    latency_s: float = 0.0
    error_type: str = ""
    message: str = ""
    attempt: int = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class LMStart(Event):
    """An LM request was sent to a deployment."""

    topic: ClassVar[str] = "lm.start"
    deployment: str
    model: str
    call_id: str = ""
    module_path: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class LMEnd(Event):
    """An LM request ended: ``error_type`` is None on success (a cache hit included)."""

    topic: ClassVar[str] = "lm.end"
    deployment: str
    model: str
    call_id: str = ""
    module_path: str | None = None
    latency_s: float = 0.0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cache_hit: bool = False
    error_type: str | None = None
    # Why each choice ended ("stop", "length", ...), as the provider said; () if unknown.
    finish_reasons: tuple[str, ...] = ()

    def log_level(self) -> str:
        return "info" if self.error_type is None else "warning"


@dataclass(frozen=True, slots=True, kw_only=True)
class LMRetry(Event):
    """An LM request's HTTP attempt failed with ``error_type`` and is retried after
    ``delay_s`` seconds (between its ``lm.start`` and ``lm.end``)."""

    topic: ClassVar[str] = "lm.retry"
    level: ClassVar[str] = "warning"
    deployment: str
    model: str
    error_type: str = ""
    delay_s: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class RuntimeRestart(Event):
    """A supervised actor of the runtime was restarted after exiting with ``reason``."""

    topic: ClassVar[str] = "runtime.restart"
    level: ClassVar[str] = "warning"
    supervisor: str
    child_id: str
    reason: str = ""
    restart_count: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class RuntimeEscalation(Event):
    """A supervisor of the runtime exceeded its restart intensity and gave up: its parent
    now decides (for the root: the app is down, see ``dsa.start(on_exit=...)``)."""

    topic: ClassVar[str] = "runtime.escalation"
    level: ClassVar[str] = "error"
    supervisor: str
    child_id: str
    reason: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerTransition(Event):
    """A deployment's circuit breaker changed state."""

    topic: ClassVar[str] = "breaker.transition"
    deployment: str
    from_state: BreakerState
    to_state: BreakerState
    failure_rate: float | None = None
    slow_call_rate: float | None = None

    def log_level(self) -> str:
        return "warning" if self.to_state == "open" else "info"

    @classmethod
    def of(cls, transition: breaker.BreakerTransition) -> BreakerTransition:
        """The event of a circuit breaker's state change (its ``on_transition`` report)."""
        return cls(
            deployment=transition.name,
            from_state=transition.from_state,
            to_state=transition.to_state,
            failure_rate=transition.failure_rate,
            slow_call_rate=transition.slow_call_rate,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadLetterEvent(Event):
    """An input was quarantined in the dead-letter store (``dead_letter_id`` names it)."""

    topic: ClassVar[str] = "dead_letter"
    level: ClassVar[str] = "error"
    dead_letter_id: str
    program: str
    module_path: str
    exception_type: str = ""
    attempts: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class RunProgress(Event):
    """Progress of an evaluation or optimization run."""

    topic: ClassVar[str] = "run.progress"
    run_id: str
    kind: str = "run"
    completed: int = 0
    total: int | None = None
    score: float | None = None
    message: str = ""


# -------------------------------------------------------------------------- subscriptions

Subscriber = Callable[[Any], None]
"""A subscriber gets each matching event (an :class:`Event`), in the bus actor's thread."""

# The topics of call events, by kind: built per call only when someone needs them.
CALL_TOPICS = {
    "module": ("module.start", "module.end", "module.error"),
    "lm": ("lm.start", "lm.end", "lm.retry"),
}

_ids = itertools.count(1)


def _check_pattern(pattern: str) -> None:
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(f"an event pattern is a non-empty string, got {pattern!r}")
    star = pattern.find("*")
    if star != -1 and not (pattern == "*" or (pattern.endswith(".*") and star == len(pattern) - 1)):
        raise ValueError(
            f"bad event pattern {pattern!r}: use a topic ('lm.end'), a prefix wildcard "
            "('lm.*') or '*'"
        )


def matches(pattern: str, topic: str) -> bool:
    """True if ``topic`` matches ``pattern`` (exact, ``"prefix.*"`` or ``"*"``)."""
    if pattern == "*":
        return True
    if pattern.endswith(".*"):
        return topic.startswith(pattern[:-1])
    return pattern == topic


class Subscription:
    """One subscriber and its pattern; ``failures`` counts the exceptions it raised."""

    __slots__ = ("_active", "batch", "callback", "failures", "id", "pattern", "sampled_calls")

    def __init__(
        self, pattern: str, callback: Subscriber, batch: bool = False, sampled_calls: bool = False
    ) -> None:
        self.id = next(_ids)
        self.pattern = pattern
        self.callback = callback
        # True: ``callback`` takes a list of events (those drained together), not one.
        self.batch = batch
        # True: it needs the call events of sampled calls only (see the module docstring).
        self.sampled_calls = sampled_calls
        self.failures = 0
        self._active = True

    @property
    def active(self) -> bool:
        return self._active

    def __repr__(self) -> str:
        name = getattr(self.callback, "__qualname__", repr(self.callback))
        return f"Subscription(#{self.id}, {self.pattern!r}, {name}, active={self._active})"


class _Subscriptions:
    """The subscribers, shared by the handle and every incarnation of the bus actor.

    Copy-on-write: readers (the bus thread) never take the lock; a per-topic cache of the
    matching subscribers is rebuilt lazily after each change.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subs: tuple[Subscription, ...] = ()
        self._by_topic: dict[str, tuple[Subscription, ...]] = {}
        # The kinds of call events (CALL_TOPICS' keys) some subscriber takes for every call.
        self.every_call: frozenset[str] = frozenset()
        # The thread of the live bus actor (for flush's self-deadlock check).
        self.delivering_thread: threading.Thread | None = None

    def add(self, sub: Subscription) -> None:
        with self._lock:
            self._subs = (*self._subs, sub)
            self._by_topic = {}
            self._changed()

    def remove(self, sub: Subscription) -> bool:
        with self._lock:
            if sub not in self._subs:
                return False
            sub._active = False
            self._subs = tuple(s for s in self._subs if s is not sub)
            self._by_topic = {}
            self._changed()
            return True

    def _changed(self) -> None:
        self.every_call = frozenset(
            kind
            for kind, topics in CALL_TOPICS.items()
            if any(
                not s.sampled_calls and matches(s.pattern, t) for s in self._subs for t in topics
            )
        )

    def for_topic(self, topic: str) -> tuple[Subscription, ...]:
        cache = self._by_topic
        found = cache.get(topic)
        if found is None:
            found = tuple(s for s in self._subs if matches(s.pattern, topic))
            cache[topic] = found
        return found

    def all(self) -> tuple[Subscription, ...]:
        return self._subs


# ------------------------------------------------------------------------------ the actor


class _Flush:
    __slots__ = ()


_FLUSH = _Flush()


class _Drain:
    __slots__ = ()


_DRAIN = _Drain()

# Events drained per batch at most: a subscriber's batch stays bounded under a flood.
_BATCH = 1024


class _Pending:
    """Events published and not yet delivered, shared by the handle and every incarnation
    of the bus actor (so a restart loses none).

    ``awake`` is True from the moment a publisher told the actor to drain until the actor
    starts draining: publishers that find it True only append. The actor clears it *before*
    draining, so an event appended after its last look finds it False and wakes it again:
    no event waits unseen (a spare wake-up finds nothing, which is harmless).

    Woken less than ``linger_s`` after its last drain (events are coming fast), the actor
    waits up to ``linger_s`` on ``hurry`` before draining (``awake`` still True, so what is
    published meanwhile only appends): at most one drain per ``linger_s`` then. Woken
    later than that, it drains at once (lingering would only add a second wake-up, the
    timed wait's, to an event that has no company). ``flush`` and ``stop`` set ``hurry`` so
    they never wait for a linger, and the actor clears it once flushed.
    """

    __slots__ = ("awake", "drained_at", "events", "hurry", "linger_s")

    def __init__(self, linger_s: float = 0.0) -> None:
        self.events: collections.deque[Any] = collections.deque()
        self.awake = False
        self.hurry = threading.Event()
        self.linger_s = linger_s
        # When the last drain ended (time.monotonic()); -inf: none yet.
        self.drained_at = float("-inf")


@dataclass
class BusStats:
    """Counters of one bus (kept in the handle, so they survive actor restarts)."""

    published: int = 0
    dropped: int = 0
    delivered: int = 0
    subscriber_failures: int = 0


class EventBusActor(SupervisedActor):
    """Delivers the published events to the matching subscribers, in its own thread."""

    def __init__(self, subscriptions: _Subscriptions, stats: BusStats, pending: _Pending) -> None:
        super().__init__()
        self._subscriptions = subscriptions
        self._stats = stats
        self._pending = pending

    def on_start(self) -> None:
        self._subscriptions.delivering_thread = threading.current_thread()
        if self._pending.events:  # left by an earlier incarnation
            self._pending.awake = True
            self.actor_ref.tell(_DRAIN)

    def on_stop(self) -> None:
        self._drain()  # stop delivers what was published before it

    def on_receive(self, message: Any) -> Any:
        if message is _DRAIN:
            pending = self._pending
            linger = pending.linger_s
            if (
                linger > 0
                and len(pending.events) < _BATCH
                and time.monotonic() - pending.drained_at < linger
            ):
                # Events come fast: let those of the next few ms join this drain (_Pending).
                pending.hurry.wait(linger)
            self._drain()
            pending.drained_at = time.monotonic()
            return None
        if message is _FLUSH:
            self._drain()
            self._pending.hurry.clear()
            return True
        if getattr(message, "topic", None) is not None:  # a told event (not via publish)
            self._deliver([message])
            return None
        _log.warning("event_bus.not_an_event", type=type(message).__name__)
        return None

    def _drain(self) -> None:
        pending = self._pending
        pending.awake = False  # before looking: see _Pending
        events = pending.events
        while events:
            batch: list[Any] = []
            # One at a time, not the whole queue at once: what waits stays counted against
            # max_pending while a slow subscriber works.
            while events and len(batch) < _BATCH:
                try:
                    batch.append(events.popleft())
                except IndexError:
                    break
            self._deliver(batch)

    def _deliver(self, batch: list[Any]) -> None:
        stats = self._stats
        subscriptions = self._subscriptions
        batched: dict[Subscription, list[Any]] = {}
        for message in batch:
            topic = getattr(message, "topic", None)
            if not isinstance(topic, str):
                _log.warning("event_bus.not_an_event", type=type(message).__name__)
                continue
            message = _scrubbed(message)
            for sub in subscriptions.for_topic(topic):
                if not sub._active:
                    continue  # Unsubscribed after the table was cached.
                if sub.batch:
                    batched.setdefault(sub, []).append(message)
                elif _delivered(sub, message, topic, stats):
                    stats.delivered += 1
        for sub, events in batched.items():
            if sub._active and _delivered(sub, events, events[0].topic, stats):
                stats.delivered += len(events)


def _delivered(sub: Subscription, message: Any, topic: str, stats: BusStats) -> bool:
    try:
        sub.callback(message)
    except Exception as exc:
        sub.failures += 1
        stats.subscriber_failures += 1
        n = sub.failures
        # Log the first few failures, then ever more rarely: a subscriber broken on
        # every event must not flood the log.
        if n <= 10 or n & (n - 1) == 0:
            _log.warning(
                "event_bus.subscriber_failed",
                subscription=repr(sub),
                topic=topic,
                error=f"{type(exc).__name__}: {exc}",
                failures=n,
                exc_info=n == 1,
            )
        return False
    return True


# Free-text fields of events: an error message or exit reason may quote a credential (a
# server echoing a header, an HTTP library's error). Scrubbed here, in the bus's thread,
# once per event and only when set, so no subscriber (log, callback, UI) ever sees one.
_FREE_TEXT_FIELDS = ("message", "reason")


def _scrubbed(event: Any) -> Any:
    changes = {}
    for name in _FREE_TEXT_FIELDS:
        text = getattr(event, name, None)
        if isinstance(text, str) and text:
            clean = redaction.redact(text)
            if clean != text:
                changes[name] = clean
    if not changes:
        return event
    try:
        return dataclasses.replace(event, **changes)
    except (TypeError, ValueError):
        return event


# ----------------------------------------------------------------------------- the handle

DEFAULT_MAX_PENDING = 100_000
# How long the bus, once woken, waits for more events before delivering (see _Pending):
# it then wakes at most ~200 times a second, whatever the rate of sampled calls.
DEFAULT_LINGER_S = 0.005
# How often the timer wakes the bus for sampled calls' events while they come: they are
# queued with no wake-up on the call's path, and reach tracing at most this much later.
_SAMPLED_TICK_S = 0.02


class EventBus:
    """Handle to the event bus: publish, subscribe, flush. Thread-safe.

    Standalone: ``EventBus.start()`` starts the actor and ``stop()`` stops it. Supervised:
    create ``EventBus(name=...)``, put :meth:`child_spec` in a supervisor; the handle finds
    the live actor by ``name`` in ``registry`` (so it keeps working across restarts).

    ``max_pending``: events waiting for delivery beyond which ``publish`` drops (and counts)
    rather than let a stuck subscriber grow memory without end. None: no bound.
    ``linger_s``: how long the bus, woken by an event, waits for more before delivering
    (0: delivers at once; ``flush`` never waits for it).
    """

    def __init__(
        self,
        *,
        name: str | None = None,
        registry: Registry | None = None,
        max_pending: int | None = DEFAULT_MAX_PENDING,
        linger_s: float = DEFAULT_LINGER_S,
    ) -> None:
        if linger_s < 0:
            raise ValueError(f"linger_s is 0 or more seconds, got {linger_s!r}")
        self.name = name if name is not None else f"dspy_actors.events.{next(_ids)}"
        self.registry = supervisors.registry if registry is None else registry
        self.max_pending = max_pending
        self.stats = BusStats()
        self._subscriptions = _Subscriptions()
        self._pending = _Pending(linger_s)
        # True while the timer ticks for sampled calls' events (_publish_sampled).
        self._ticking = False
        self._tick_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        # Which calls' events ``sampled_calls`` subscriptions get (tracing sets it): a
        # trace id's yes or no, the same every time it is asked; None: no call's.
        self.call_sampler: Callable[[str | None], bool] | None = None
        self._ref: pykka.ActorRef[Any] | None = None
        self._own_ref: pykka.ActorRef[Any] | None = None

    # Lifecycle. ------------------------------------------------------------------------

    def child_spec(self, id: str = "events", **overrides: Any) -> ChildSpec:
        """A ChildSpec for the bus actor, registered under this handle's ``name``."""
        options: dict[str, Any] = {"shutdown": 5.0, "name": self.name, **overrides}
        return ChildSpec(
            id, EventBusActor, args=(self._subscriptions, self.stats, self._pending), **options
        )

    @classmethod
    def start(
        cls,
        *,
        name: str | None = None,
        registry: Registry | None = None,
        max_pending: int | None = DEFAULT_MAX_PENDING,
        linger_s: float = DEFAULT_LINGER_S,
    ) -> Self:
        """Start an unsupervised bus (its actor is stopped by :meth:`stop`)."""
        bus = cls(name=name, registry=registry, max_pending=max_pending, linger_s=linger_s)
        ref = EventBusActor.start(bus._subscriptions, bus.stats, bus._pending)
        try:
            bus.registry.register(bus.name, ref)
        except BaseException:
            ref.stop(block=True, timeout=5.0)
            raise
        bus._own_ref = bus._ref = ref
        return bus

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop a bus started with :meth:`start`, after delivering what was published.

        Returns False if it did not stop within ``timeout``. A supervised bus is stopped by
        its supervisor instead (this does nothing and returns True).
        """
        ref = self._own_ref
        if ref is None:
            return True
        self._pending.hurry.set()  # no linger: stop delivers what is queued, now
        try:
            ref.stop(block=True, timeout=timeout)
        except pykka.Timeout:
            return False
        finally:
            self.registry.unregister(self.name, ref)
        return True

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    @property
    def is_alive(self) -> bool:
        return self._resolve() is not None

    # Publishing. -----------------------------------------------------------------------

    def publish(self, event: Event) -> None:
        """Send ``event`` to the subscribers. Never blocks and never raises."""
        self._publish(event, True)

    def _publish_sampled(self, event: Event) -> None:
        """``publish`` for the events of a call the sampler picked (``call_publisher``):
        queued without waking the bus, which a timer wakes every ``_SAMPLED_TICK_S`` while
        such events come (no wake-up, no thread switch, on the call's path)."""
        self._publish(event, False)

    def _publish(self, event: Event, wake: bool) -> None:
        ref = self._ref
        try:
            if ref is None or ref.actor_stopped.is_set():
                ref = self._resolve()
                if ref is None:
                    self._count_dropped()
                    return
            if not self._subscriptions.for_topic(event.topic):
                return  # nobody listens to this kind
            pending = self._pending
            limit = self.max_pending
            if limit is not None and len(pending.events) >= limit:
                self._count_dropped()
                return
            pending.events.append(event)
        except Exception:
            # Anything at all: the publisher (an LM call, a module) must never fail
            # because of telemetry.
            self._count_dropped()
            return
        if not wake and len(pending.events) < _BATCH:
            if not self._ticking:
                self._start_ticking()
        elif not pending.awake:
            pending.awake = True
            try:
                ref.tell(_DRAIN)
            except Exception:
                # Dead between the check and the tell: the event stays queued, and the
                # bus's next incarnation drains it when it starts.
                pending.awake = False
        with self._stats_lock:
            self.stats.published += 1

    def _start_ticking(self) -> None:
        with self._tick_lock:
            if self._ticking:
                return
            self._ticking = True
        timers.schedule(time.monotonic() + _SAMPLED_TICK_S, self._tick)

    def _tick(self) -> None:
        """In the timer thread, every ``_SAMPLED_TICK_S`` while sampled calls' events come:
        wake the bus for those queued; stop ticking at the first tick that finds none."""
        pending = self._pending
        if pending.events:
            if not pending.awake:
                ref = self._ref
                if ref is None or ref.actor_stopped.is_set():
                    ref = self._resolve()
                try:
                    if ref is None:
                        raise pykka.ActorDeadError(self.name)
                    pending.awake = True
                    ref.tell(_DRAIN)
                except Exception:
                    # No bus now: what is queued waits for its next incarnation (drained
                    # when it starts); the next sampled event starts the ticks again.
                    pending.awake = False
                    with self._tick_lock:
                        self._ticking = False
                    return
            timers.schedule(time.monotonic() + _SAMPLED_TICK_S, self._tick)
            return
        with self._tick_lock:
            self._ticking = False
            if not pending.events:
                return
            self._ticking = True  # one came after the look above
        timers.schedule(time.monotonic() + _SAMPLED_TICK_S, self._tick)

    def _count_dropped(self) -> None:
        with self._stats_lock:
            self.stats.dropped += 1

    def _resolve(self) -> pykka.ActorRef[Any] | None:
        ref = self.registry.whereis(self.name)
        self._ref = ref
        return ref

    # Subscribing. ----------------------------------------------------------------------

    def subscribe(
        self,
        pattern: str,
        callback: Subscriber,
        *,
        batch: bool = False,
        sampled_calls: bool = False,
    ) -> Subscription:
        """Call ``callback(event)`` for every event whose topic matches ``pattern``.

        With ``batch=True``, ``callback(events)`` gets a list of the matching events
        delivered together instead (in publish order; never empty). Batches of different
        subscriptions are delivered one after the other: a subscriber that needs the order
        between topics (say ``module.*`` and ``lm.*``) takes them in one subscription.

        With ``sampled_calls=True`` the subscription does not make every call publish its
        ``module.*``/``lm.*`` events, only the calls ``call_sampler`` picks (it may still
        get others' when another subscriber takes every call's: check the trace id).
        """
        _check_pattern(pattern)
        if not callable(callback):
            raise TypeError(f"a subscriber is callable, got {callback!r}")
        sub = Subscription(pattern, callback, batch, sampled_calls)
        self._subscriptions.add(sub)
        return sub

    def subscribe_callback(self, callback: Callback) -> Subscription:
        """Route module and LM events to a :class:`Callback`'s hooks."""
        return self.subscribe("*", callback_subscriber(callback))

    def unsubscribe(self, sub: Subscription) -> bool:
        """Stop deliveries to ``sub`` (one already running finishes); False if not subscribed."""
        return self._subscriptions.remove(sub)

    def subscriptions(self) -> tuple[Subscription, ...]:
        return self._subscriptions.all()

    def call_publisher(self, kind: str, trace_id: str | None) -> Callable[[Event], None] | None:
        """How to publish the ``kind`` (``"module"``, ``"lm"``) events of the call
        ``trace_id``, or None when nobody needs them (then none is built): no subscriber
        takes every call's, and the call sampler (if any) does not pick this call."""
        if kind in self._subscriptions.every_call:
            return self.publish
        sampled = self.call_sampler
        if sampled is None or not self._subscriptions.all():
            return None
        return self._publish_sampled if sampled(trace_id) else None

    def flush(self, timeout: float) -> bool:
        """Wait until every event published (by any thread) before this call was delivered.

        Returns False if the bus is not running or did not catch up within ``timeout``.
        """
        ref = self._resolve()
        if ref is None:
            return False
        if self._subscriptions.delivering_thread is threading.current_thread():
            raise RuntimeError("flush() from a subscriber would wait for itself forever")
        self._pending.hurry.set()  # a drain lingering now delivers at once
        try:
            return bool(supervisors.ask(ref, _FLUSH, timeout=timeout))
        except (pykka.Timeout, pykka.ActorDeadError):
            return False

    def __repr__(self) -> str:
        return f"EventBus({self.name!r}, alive={self.is_alive})"


# ------------------------------------------------------------------------------ subscribers


def _event_dict(event: Event) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(event):
        value = getattr(event, f.name)
        out[f.name] = dict(value) if isinstance(value, Mapping) else value
    return out


def structlog_subscriber(
    renderer: Literal["json", "console"] = "json",
    *,
    stream: TextIO | None = None,
    logger_name: str = "dspy_actors.events",
) -> Subscriber:
    """A subscriber that logs each event as one structured line to ``stream`` (stderr).

    The line has ``event`` (the topic), ``level``, ``logger`` and every field of the event.
    It uses its own structlog logger and processors: the global structlog configuration is
    neither used nor changed.
    """
    if renderer == "json":
        # Inputs and outputs may hold values with no JSON form: repr them, never fail.
        render: Any = structlog.processors.JSONRenderer(default=repr)
    elif renderer == "console":
        out = sys.stderr if stream is None else stream
        render = structlog.dev.ConsoleRenderer(colors=out.isatty())
    else:
        raise ValueError(f"renderer must be 'json' or 'console', got {renderer!r}")
    bound = structlog.wrap_logger(
        structlog.PrintLogger(file=sys.stderr if stream is None else stream),
        processors=[structlog.processors.add_log_level, redaction.redact_event_dict, render],
        # Explicit, so a global structlog configuration (a level filter, say) cannot apply.
        wrapper_class=structlog.make_filtering_bound_logger(logging.NOTSET),
        context_class=dict,
        cache_logger_on_first_use=False,
    )
    logger = bound.bind(logger=logger_name)

    def log_event(event: Event) -> None:
        method = getattr(logger, event.log_level(), logger.info)
        method(event.topic, **_event_dict(event))

    log_event.__qualname__ = f"structlog_subscriber({renderer!r})"
    return log_event


class Callback:
    """Hooks called for module and LM events, as DSPy callbacks: override the ones you need.

    ``on_module_end`` and ``on_lm_end`` are called once per start, on success and on
    failure alike (a :class:`ModuleError`, or an :class:`LMEnd` with ``error_type`` set).
    Register with ``bus.subscribe_callback(cb)`` (or ``callback_subscriber``).
    """

    def on_module_start(self, event: ModuleStart) -> None:
        """A module call started."""

    def on_module_end(self, event: ModuleEnd | ModuleError) -> None:
        """A module call ended (check ``isinstance(event, ModuleError)`` for failures)."""

    def on_lm_start(self, event: LMStart) -> None:
        """An LM request started."""

    def on_lm_end(self, event: LMEnd) -> None:
        """An LM request ended (``event.error_type`` is set if it failed)."""


def callback_subscriber(callback: Callback) -> Subscriber:
    """A subscriber (for pattern ``"*"``) routing events to ``callback``'s hooks."""
    routes: dict[str, Callable[[Any], None]] = {
        ModuleStart.topic: callback.on_module_start,
        ModuleEnd.topic: callback.on_module_end,
        ModuleError.topic: callback.on_module_end,
        LMStart.topic: callback.on_lm_start,
        LMEnd.topic: callback.on_lm_end,
    }

    def route(event: Event) -> None:
        hook = routes.get(event.topic)
        if hook is not None:
            hook(event)

    route.__qualname__ = f"callback_subscriber({type(callback).__name__})"
    return route
