"""A circuit breaker per LM deployment: stop calling a deployment that keeps failing.

The breaker follows the well-known closed / open / half-open model (as in Resilience4j),
on a *count-based* sliding window of call outcomes.

Closed
    Every ``acquire()`` is admitted. Each decided outcome (``record_success`` /
    ``record_failure``) enters a window holding the last ``window_size`` outcomes. A call
    is *slow* when its duration is ``>= slow_call_duration``, whether it succeeded or not.
    Once the window holds at least ``minimum_calls`` outcomes, every new outcome re-evaluates
    it: if the failure rate ``>= failure_rate_threshold`` or the slow-call rate
    ``>= slow_call_rate_threshold``, the breaker opens. (A slow-call threshold of ``1.0``
    only trips when every call in the window is slow.)
Open
    ``acquire()`` raises :class:`CircuitOpen` at once, with ``retry_after`` = the time left
    of ``wait_in_open``. The first ``acquire()`` after that wait moves the breaker to
    half-open and is admitted. (Nothing happens on a timer: reads such as ``state`` never
    change the state.)
Half-open
    At most ``half_open_permitted_calls`` trial calls are admitted; further acquires raise
    :class:`CircuitOpen` with ``retry_after=None`` (no estimate: it depends on the trials).
    Rates are taken over the ``half_open_permitted_calls`` trials: as soon as the failures
    (or slow calls) decided so far reach a threshold, the breaker opens again; when all
    trials are decided below both thresholds it closes with an empty window. A ``release()``d
    trial gives its permit back, so another trial may be admitted in its place.

Every ``acquire()`` must be settled by exactly one of ``record_success(duration)``,
``record_failure(duration)`` or ``release()`` (the last for calls whose outcome says nothing
about the deployment's health, such as a 400 caused by the request itself). A half-open
trial that is never settled keeps its permit forever, so callers must bound their calls with
a timeout.

An outcome counts only in the state *epoch* (the stretch between two transitions) in which
its call was admitted: a slow call admitted while closed that finishes after the breaker
has opened is ignored instead of judging the half-open trials. ``acquire()`` returns a
:class:`Permit`; passing it back (``record_success(d, permit=p)``) settles exactly that call.
Without it the outcome is attributed to the oldest epoch with calls in flight, which keeps
the half-open admission limit exact and attributes outcomes correctly whenever calls finish
in the order they started.

``on_transition`` receives a :class:`BreakerTransition` for every state change, in order,
outside the breaker's lock (it may call back into the breaker). It can run on whichever
thread is delivering at the moment; an exception it raises is logged and swallowed so that a
broken subscriber cannot break LM calls.

Over 400 lines: one state machine (closed, open, half-open) and its sliding window: the
transitions are easier to check side by side.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from dspy_actors.lm.errors import LMError

__all__ = [
    "BreakerSnapshot",
    "BreakerState",
    "BreakerTransition",
    "CircuitBreaker",
    "CircuitOpen",
    "Permit",
]

log = logging.getLogger("dspy_actors.lm")

BreakerState = Literal["closed", "open", "half_open"]

_FAILED = 1
_SLOW = 2


class CircuitOpen(LMError):
    """The deployment's circuit breaker rejected the call without trying it.

    ``retry_after`` is the time (seconds) left before the breaker lets a trial call through,
    or ``None`` while it is half-open with all trial permits taken. Not ``retryable``: a
    router should fall back to another deployment rather than wait here.
    """

    retryable = False

    def __init__(self, name: str, state: BreakerState, retry_after: float | None) -> None:
        if retry_after is None:
            detail = "half-open, all trial calls in flight"
        else:
            detail = f"open, next trial in {retry_after:.3f}s"
        super().__init__(f"circuit breaker {name!r} is {detail}", retry_after=retry_after)
        self.name = name
        self.state = state


@dataclass(frozen=True, slots=True)
class BreakerTransition:
    """One state change. ``failure_rate`` and ``slow_call_rate`` are those of the outcomes
    that decided it (for ``open -> half_open``: those that opened the breaker); ``at`` is the
    breaker clock's reading. The app publishes it as the ``breaker.transition`` event
    (runtime/_events.py), whose rates have the same names."""

    name: str
    from_state: BreakerState
    to_state: BreakerState
    failure_rate: float
    slow_call_rate: float
    at: float

    @property
    def slow_rate(self) -> float:
        """``slow_call_rate`` by its earlier name."""
        return self.slow_call_rate


@dataclass(frozen=True, slots=True)
class BreakerSnapshot:
    """A consistent view of the breaker.

    ``calls``, ``failed_calls`` and ``slow_calls`` count the outcomes of the current state:
    the sliding window when closed, the decided trials when half-open, zero when open.
    ``in_flight`` counts acquired, unsettled calls of every epoch. ``retry_after`` is the
    time left in open (``0.0`` once the wait is over), ``None`` in other states.
    ``transitions`` counts every state change so far.
    """

    name: str
    state: BreakerState
    calls: int
    failed_calls: int
    slow_calls: int
    failure_rate: float
    slow_rate: float
    in_flight: int
    retry_after: float | None
    transitions: int


class Permit:
    """Proof of one admitted call; settle it once through the breaker that issued it."""

    __slots__ = ("_breaker_id", "_settled", "epoch", "state")

    def __init__(self, breaker_id: int, epoch: int, state: BreakerState) -> None:
        self._breaker_id = breaker_id
        self._settled = False
        #: The state epoch the call was admitted in (the number of transitions before it).
        self.epoch = epoch
        #: ``"closed"`` or ``"half_open"``: the state that admitted the call.
        self.state = state

    def __repr__(self) -> str:
        return f"Permit(epoch={self.epoch}, state={self.state!r}, settled={self._settled})"


def _check_int(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


def _check_number(name: str, value: object, *, low: float, low_open: bool, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise ValueError(f"{name} must be a number, got {value!r}")
    ok_low = value > low if low_open else value >= low
    if not ok_low or value > high:
        left = "(" if low_open else "["
        raise ValueError(f"{name} must be in {left}{low}, {high}], got {value!r}")
    return float(value)


class CircuitBreaker:
    """Closed / open / half-open circuit breaker on a count-based sliding window.

    Thread-safe. See the module docstring for the exact semantics.
    """

    def __init__(
        self,
        *,
        name: str,
        window_size: int = 20,
        minimum_calls: int = 10,
        failure_rate_threshold: float = 0.5,
        # An LM answers in 1-30 s, a reasoning model longer: a provider whose every call
        # takes 10 s is slow, not down (Resilience4j's default too; an LM's timeout is 60 s).
        slow_call_duration: float = 60.0,
        slow_call_rate_threshold: float = 1.0,
        wait_in_open: float = 5.0,
        half_open_permitted_calls: int = 3,
        clock: Callable[[], float] = time.monotonic,
        on_transition: Callable[[BreakerTransition], None] | None = None,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty str, got {name!r}")
        self.name = name
        self.window_size = _check_int("window_size", window_size, 1)
        self.minimum_calls = _check_int("minimum_calls", minimum_calls, 1)
        if minimum_calls > window_size:
            raise ValueError(
                f"minimum_calls ({minimum_calls}) must not exceed window_size ({window_size}): "
                "the window could never hold enough outcomes to decide"
            )
        self.failure_rate_threshold = _check_number(
            "failure_rate_threshold", failure_rate_threshold, low=0.0, low_open=True, high=1.0
        )
        self.slow_call_duration = _check_number(
            "slow_call_duration", slow_call_duration, low=0.0, low_open=True, high=math.inf
        )
        self.slow_call_rate_threshold = _check_number(
            "slow_call_rate_threshold", slow_call_rate_threshold, low=0.0, low_open=True, high=1.0
        )
        self.wait_in_open = _check_number(
            "wait_in_open", wait_in_open, low=0.0, low_open=False, high=math.inf
        )
        if math.isinf(self.wait_in_open):
            raise ValueError("wait_in_open must be finite")
        self.half_open_permitted_calls = _check_int(
            "half_open_permitted_calls", half_open_permitted_calls, 1
        )
        if not callable(clock):
            raise ValueError(f"clock must be callable, got {clock!r}")
        if on_transition is not None and not callable(on_transition):
            raise ValueError(f"on_transition must be callable or None, got {on_transition!r}")
        self._clock = clock
        self._on_transition = on_transition

        self._lock = threading.Lock()
        self._state: BreakerState = "closed"
        self._epoch = 0
        self._opened_at = 0.0
        # The closed-state window: a ring of outcome bit sets (_FAILED | _SLOW).
        self._ring = [0] * window_size
        self._ring_next = 0
        # Outcomes of the current state: the window when closed, the trials when half-open.
        self._calls = 0
        self._failed = 0
        self._slow = 0
        # Unsettled calls per admission epoch, oldest first (dict order = epoch order,
        # because only the current, newest epoch ever gains calls).
        self._in_flight: dict[int, int] = {}
        self._last_rates = (0.0, 0.0)
        # Transitions waiting to be delivered to on_transition, and whether a thread is
        # delivering them (one deliverer at a time keeps them in order).
        self._pending: deque[BreakerTransition] = deque()
        self._delivering = False

    # -- public API -------------------------------------------------------------------

    @property
    def state(self) -> BreakerState:
        """The current state (reading it never causes a transition)."""
        with self._lock:
            return self._state

    def acquire(self) -> Permit:
        """Admit one call or raise :class:`CircuitOpen`.

        Settle the returned permit with ``record_success``, ``record_failure`` or
        ``release`` (passing the permit is optional but exact; see the module docstring).
        """
        try:
            with self._lock:
                if self._state == "open":
                    now = self._clock()
                    left = self._opened_at + self.wait_in_open - now
                    if left > 0:
                        raise CircuitOpen(self.name, "open", left)
                    failure_rate, slow_rate = self._last_rates
                    self._transition("half_open", failure_rate, slow_rate, now)
                elif self._state == "half_open":
                    used = self._in_flight.get(self._epoch, 0) + self._calls
                    if used >= self.half_open_permitted_calls:
                        raise CircuitOpen(self.name, "half_open", None)
                self._in_flight[self._epoch] = self._in_flight.get(self._epoch, 0) + 1
                return Permit(id(self), self._epoch, self._state)
        finally:
            self._deliver()

    def record_success(self, duration: float, permit: Permit | None = None) -> None:
        """Settle an admitted call that succeeded after ``duration`` seconds."""
        self._settle(permit, duration, failed=False)

    def record_failure(self, duration: float, permit: Permit | None = None) -> None:
        """Settle an admitted call that failed (in a way that speaks about the deployment's
        health: 5xx, timeout, connection error, 429) after ``duration`` seconds."""
        self._settle(permit, duration, failed=True)

    def release(self, permit: Permit | None = None) -> None:
        """Settle an admitted call without counting its outcome (its permit is freed)."""
        self._settle(permit, None, failed=False)

    def snapshot(self) -> BreakerSnapshot:
        """State, counts and rates, read atomically."""
        with self._lock:
            retry_after = None
            if self._state == "open":
                retry_after = max(0.0, self._opened_at + self.wait_in_open - self._clock())
            failure_rate, slow_rate = self._rates()
            return BreakerSnapshot(
                name=self.name,
                state=self._state,
                calls=self._calls,
                failed_calls=self._failed,
                slow_calls=self._slow,
                failure_rate=failure_rate,
                slow_rate=slow_rate,
                in_flight=sum(self._in_flight.values()),
                retry_after=retry_after,
                transitions=self._epoch,
            )

    def __repr__(self) -> str:
        return f"CircuitBreaker(name={self.name!r}, state={self.state!r})"

    # -- internals (called with self._lock held unless stated) ------------------------

    def _settle(self, permit: Permit | None, duration: float | None, *, failed: bool) -> None:
        if duration is not None and (
            isinstance(duration, bool)
            or not isinstance(duration, int | float)
            or not duration >= 0  # also rejects NaN
        ):
            raise ValueError(f"duration must be a number >= 0 (seconds), got {duration!r}")
        try:
            with self._lock:
                epoch = self._take_in_flight(permit)
                if duration is None or epoch != self._epoch:
                    return  # released, or admitted in an earlier state: does not count
                outcome = (_FAILED if failed else 0) | (
                    _SLOW if duration >= self.slow_call_duration else 0
                )
                if self._state == "closed":
                    self._record_closed(outcome)
                elif self._state == "half_open":
                    self._record_half_open(outcome)
        finally:
            self._deliver()

    def _take_in_flight(self, permit: Permit | None) -> int:
        """Remove one unsettled call from the books and return its admission epoch."""
        if permit is not None:
            if permit._breaker_id != id(self):
                raise ValueError(f"{permit!r} was not issued by breaker {self.name!r}")
            if permit._settled:
                raise RuntimeError(f"{permit!r} was already settled")
            permit._settled = True
            epoch = permit.epoch
            # Calls settled without permits may already have been booked against this
            # epoch (oldest first); then book this one against the oldest epoch instead.
            booked = epoch if epoch in self._in_flight else next(iter(self._in_flight))
        else:
            if not self._in_flight:
                raise RuntimeError(
                    f"breaker {self.name!r}: outcome recorded without a matching acquire()"
                )
            # Oldest first: this can misattribute an outcome when calls finish out of
            # order, but never lets the current epoch believe it has fewer calls in flight
            # than it really has, so the half-open limit still holds.
            epoch = booked = next(iter(self._in_flight))
        left = self._in_flight[booked] - 1
        if left:
            self._in_flight[booked] = left
        else:
            del self._in_flight[booked]
        return epoch

    def _rates(self) -> tuple[float, float]:
        if not self._calls:
            return 0.0, 0.0
        return self._failed / self._calls, self._slow / self._calls

    def _record_closed(self, outcome: int) -> None:
        evicted = self._ring[self._ring_next] if self._calls == self.window_size else 0
        self._ring[self._ring_next] = outcome
        self._ring_next = (self._ring_next + 1) % self.window_size
        self._calls = min(self._calls + 1, self.window_size)
        self._failed += bool(outcome & _FAILED) - bool(evicted & _FAILED)
        self._slow += bool(outcome & _SLOW) - bool(evicted & _SLOW)
        if self._calls < self.minimum_calls:
            return
        failure_rate, slow_rate = self._rates()
        if (
            failure_rate >= self.failure_rate_threshold
            or slow_rate >= self.slow_call_rate_threshold
        ):
            self._transition("open", failure_rate, slow_rate, self._clock())

    def _record_half_open(self, outcome: int) -> None:
        self._calls += 1
        self._failed += bool(outcome & _FAILED)
        self._slow += bool(outcome & _SLOW)
        permitted = self.half_open_permitted_calls
        # Rates over all permitted trials: once the decided ones alone reach a threshold,
        # the undecided ones cannot bring it back under, so open without waiting for them.
        if (
            self._failed / permitted >= self.failure_rate_threshold
            or self._slow / permitted >= self.slow_call_rate_threshold
        ):
            failure_rate, slow_rate = self._rates()
            self._transition("open", failure_rate, slow_rate, self._clock())
        elif self._calls >= permitted:
            failure_rate, slow_rate = self._rates()
            self._transition("closed", failure_rate, slow_rate, self._clock())

    def _transition(
        self, to_state: BreakerState, failure_rate: float, slow_rate: float, now: float
    ) -> None:
        if self._on_transition is not None:
            self._pending.append(
                BreakerTransition(self.name, self._state, to_state, failure_rate, slow_rate, now)
            )
        self._state = to_state
        self._epoch += 1
        self._last_rates = (failure_rate, slow_rate)
        self._calls = self._failed = self._slow = 0
        if to_state == "open":
            self._opened_at = now
        elif to_state == "closed":
            self._ring = [0] * self.window_size
            self._ring_next = 0

    def _deliver(self) -> None:
        """Hand pending transitions to on_transition, in order (called without the lock).

        Only one thread delivers at a time; a thread that finds another one delivering leaves
        its transitions to it, so nobody blocks on a slow subscriber it did not trigger, and
        a subscriber that calls back into the breaker cannot deadlock.
        """
        callback = self._on_transition
        # Unlocked peek: whoever appends a transition calls _deliver afterwards itself.
        if callback is None or not self._pending:
            return
        with self._lock:
            if self._delivering:
                return
            self._delivering = True
        try:
            while True:
                with self._lock:
                    if not self._pending:
                        self._delivering = False
                        return
                    transition = self._pending.popleft()
                try:
                    callback(transition)
                except Exception:
                    log.exception("circuit breaker %r: on_transition failed", self.name)
        except BaseException:
            with self._lock:
                self._delivering = False
            raise
