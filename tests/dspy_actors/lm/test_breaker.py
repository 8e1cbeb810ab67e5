"""CircuitBreaker: window arithmetic, state machine, fail-fast, and races under many threads."""

from __future__ import annotations

import itertools
import logging
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dspy_actors.lm._breaker import (
    BreakerState,
    BreakerTransition,
    CircuitBreaker,
    CircuitOpen,
    Permit,
)
from dspy_actors.lm.errors import LMError
from dspy_actors.testing._clock import FakeClock

JOIN_TIMEOUT = 30.0


def make(clock: FakeClock, **kw: Any) -> tuple[CircuitBreaker, list[BreakerTransition]]:
    seen: list[BreakerTransition] = []
    kw.setdefault("name", "dep-a")
    return CircuitBreaker(clock=clock, on_transition=seen.append, **kw), seen


def state_of(b: CircuitBreaker) -> str:
    """``b.state`` typed loosely, so mypy does not narrow it across calls that change it."""
    return b.state


def settle(b: CircuitBreaker, outcome: str, duration: float = 0.1) -> None:
    permit = b.acquire()
    if outcome == "ok":
        b.record_success(duration, permit)
    elif outcome == "fail":
        b.record_failure(duration, permit)
    else:
        b.release(permit)


def trip(b: CircuitBreaker, n: int) -> None:
    for _ in range(n):
        settle(b, "fail")
    assert state_of(b) == "open"


# -- parameters ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"name": ""}, "name must be a non-empty str"),
        ({"window_size": 0}, "window_size must be an int >= 1"),
        ({"window_size": 2.5}, "window_size must be an int"),
        ({"window_size": True}, "window_size must be an int"),
        ({"minimum_calls": 0}, "minimum_calls must be an int >= 1"),
        ({"window_size": 5, "minimum_calls": 6}, r"minimum_calls \(6\) must not exceed"),
        ({"failure_rate_threshold": 0.0}, r"failure_rate_threshold must be in \(0.0, 1.0\]"),
        ({"failure_rate_threshold": 1.5}, "failure_rate_threshold must be in"),
        ({"failure_rate_threshold": float("nan")}, "failure_rate_threshold must be a number"),
        ({"slow_call_duration": 0}, "slow_call_duration must be in"),
        ({"slow_call_rate_threshold": -0.1}, "slow_call_rate_threshold must be in"),
        ({"wait_in_open": -1}, r"wait_in_open must be in \[0.0"),
        ({"wait_in_open": float("inf")}, "wait_in_open must be finite"),
        ({"half_open_permitted_calls": 0}, "half_open_permitted_calls must be an int >= 1"),
        ({"clock": 5}, "clock must be callable"),
        ({"on_transition": "x"}, "on_transition must be callable or None"),
    ],
)
def test_bad_parameters_are_rejected_clearly(kw: dict[str, Any], message: str) -> None:
    kw.setdefault("name", "dep")
    with pytest.raises(ValueError, match=message):
        CircuitBreaker(**kw)


def test_defaults() -> None:
    b = CircuitBreaker(name="d")
    assert (b.window_size, b.minimum_calls, b.failure_rate_threshold) == (20, 10, 0.5)
    assert (b.slow_call_duration, b.slow_call_rate_threshold, b.wait_in_open) == (60.0, 1.0, 5.0)
    assert b.half_open_permitted_calls == 3
    assert state_of(b) == "closed"


def test_a_provider_answering_every_call_in_tens_of_seconds_is_not_cut_off_by_default() -> None:
    # LM calls of 10-30 s are normal (a long answer, a reasoning model): with the defaults
    # they never open the breaker; only calls as long as an LM's own 60 s timeout are slow.
    b, seen = make(FakeClock())
    for duration in (10.0, 30.0, 59.9) * 10:
        settle(b, "ok", duration)
    assert state_of(b) == "closed"
    assert seen == []
    for _ in range(20):
        settle(b, "ok", 60.0)
    assert [(t.to_state, t.slow_call_rate) for t in seen] == [("open", 1.0)]


# -- closed ----------------------------------------------------------------------------


def test_no_decision_before_minimum_calls() -> None:
    clock = FakeClock()
    b, seen = make(clock, window_size=10, minimum_calls=5)
    for _ in range(4):
        settle(b, "fail")
    snap = b.snapshot()
    assert (snap.state, snap.calls, snap.failed_calls, snap.failure_rate) == ("closed", 4, 4, 1.0)
    settle(b, "fail")
    assert state_of(b) == "open"
    assert [(t.from_state, t.to_state, t.failure_rate) for t in seen] == [("closed", "open", 1.0)]
    assert seen[0].at == clock()
    assert seen[0].name == "dep-a"


def test_failure_rate_threshold_is_inclusive() -> None:
    b, _ = make(FakeClock(), window_size=4, minimum_calls=4, failure_rate_threshold=0.5)
    for outcome in ("ok", "ok", "ok", "fail"):
        settle(b, outcome)
    assert b.snapshot().failure_rate == 0.25
    assert state_of(b) == "closed"
    settle(b, "fail")  # window: ok ok fail fail
    assert state_of(b) == "open"


def test_window_slides_over_the_last_outcomes() -> None:
    b, _ = make(FakeClock(), window_size=3, minimum_calls=3, failure_rate_threshold=0.9)
    for outcome in ("fail", "fail", "ok", "ok", "ok"):
        settle(b, outcome)
    snap = b.snapshot()
    assert (snap.calls, snap.failed_calls) == (3, 0)
    settle(b, "fail")
    settle(b, "fail")
    assert (b.snapshot().failed_calls, b.state) == (2, "closed")
    settle(b, "fail")
    assert state_of(b) == "open"


def test_slow_calls_open_the_breaker_only_at_their_threshold() -> None:
    clock = FakeClock()
    b, seen = make(
        clock, window_size=4, minimum_calls=4, slow_call_duration=2.0, slow_call_rate_threshold=1.0
    )
    settle(b, "ok", 2.0)  # duration == slow_call_duration is slow
    settle(b, "ok", 5.0)
    settle(b, "fail", 9.0)  # slow failures are slow too (and failures)
    settle(b, "ok", 1.999)
    snap = b.snapshot()
    assert (snap.slow_calls, snap.slow_rate, snap.failed_calls) == (3, 0.75, 1)
    assert state_of(b) == "closed"
    for _ in range(4):
        settle(b, "ok", 3.0)
    assert state_of(b) == "open"
    assert seen[-1].slow_rate == 1.0
    assert seen[-1].failure_rate == 0.0


def test_slow_call_rate_threshold_below_one() -> None:
    b, _ = make(
        FakeClock(),
        window_size=4,
        minimum_calls=2,
        slow_call_duration=1.0,
        slow_call_rate_threshold=0.5,
    )
    settle(b, "ok", 0.1)
    settle(b, "ok", 1.0)
    assert state_of(b) == "open"


def test_released_calls_do_not_count() -> None:
    b, _ = make(FakeClock(), window_size=4, minimum_calls=1)
    for _ in range(10):
        settle(b, "release")
    snap = b.snapshot()
    assert (snap.state, snap.calls, snap.in_flight) == ("closed", 0, 0)


# -- open ------------------------------------------------------------------------------


def test_open_fails_fast_with_time_left() -> None:
    clock = FakeClock()
    b, _ = make(clock, window_size=2, minimum_calls=2, wait_in_open=5.0)
    trip(b, 2)
    clock.advance(1.5)
    with pytest.raises(CircuitOpen) as info:
        b.acquire()
    err = info.value
    assert isinstance(err, LMError)
    assert not err.retryable
    assert (err.name, err.state) == ("dep-a", "open")
    assert err.retry_after == pytest.approx(3.5)
    assert "dep-a" in str(err)
    assert "open" in str(err)
    assert b.snapshot().retry_after == pytest.approx(3.5)
    clock.advance(3.4)
    with pytest.raises(CircuitOpen) as again:
        b.acquire()
    assert again.value.retry_after == pytest.approx(0.1)
    assert state_of(b) == "open"


def test_reading_the_state_never_transitions() -> None:
    clock = FakeClock()
    b, seen = make(clock, window_size=1, minimum_calls=1, wait_in_open=1.0)
    trip(b, 1)
    clock.advance(10)
    assert state_of(b) == "open"
    assert b.snapshot().retry_after == 0.0
    assert len(seen) == 1


# -- half-open -------------------------------------------------------------------------


def open_then_half_open(clock: FakeClock, **kw: Any) -> tuple[CircuitBreaker, list[Any], Permit]:
    kw = {"window_size": 2, "minimum_calls": 2, "wait_in_open": 5.0, **kw}
    b, seen = make(clock, **kw)
    trip(b, 2)
    clock.advance(5.0)
    first = b.acquire()  # exactly when the wait is over
    assert state_of(b) == "half_open"
    assert first.state == "half_open"
    return b, seen, first


def test_half_open_admits_only_the_permitted_calls_then_closes() -> None:
    clock = FakeClock()
    b, seen, first = open_then_half_open(clock, half_open_permitted_calls=3)
    second, third = b.acquire(), b.acquire()
    with pytest.raises(CircuitOpen) as info:
        b.acquire()
    assert info.value.retry_after is None
    assert info.value.state == "half_open"
    b.record_success(0.1, first)
    b.record_success(0.1, second)
    with pytest.raises(CircuitOpen):
        b.acquire()  # a decided trial does not free a permit
    assert state_of(b) == "half_open"
    b.record_success(0.1, third)
    snap = b.snapshot()
    assert (snap.state, snap.calls, snap.in_flight) == ("closed", 0, 0)  # window reset
    assert [(t.from_state, t.to_state) for t in seen] == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ]
    assert seen[1].failure_rate == 1.0  # open -> half_open carries the rates that opened it
    assert seen[2].failure_rate == 0.0
    settle(b, "fail")
    assert state_of(b) == "closed"  # minimum_calls applies again after the reset


def test_half_open_reopens_as_soon_as_the_threshold_is_certain() -> None:
    clock = FakeClock()
    b, seen, first = open_then_half_open(
        clock, half_open_permitted_calls=3, failure_rate_threshold=0.5
    )
    second, third = b.acquire(), b.acquire()
    b.record_failure(0.1, first)  # 1/3 < 0.5: undecided
    assert state_of(b) == "half_open"
    b.record_failure(0.1, second)  # 2/3 >= 0.5 whatever the third does
    assert state_of(b) == "open"
    assert seen[-1].from_state == "half_open"
    assert seen[-1].failure_rate == 1.0
    b.record_success(0.1, third)  # a trial of the finished half-open stretch: ignored
    snap = b.snapshot()
    assert (snap.state, snap.calls, snap.in_flight) == ("open", 0, 0)
    assert snap.retry_after == pytest.approx(5.0)


def test_half_open_reopens_on_slow_trials() -> None:
    clock = FakeClock()
    b, seen, first = open_then_half_open(
        clock, half_open_permitted_calls=2, slow_call_duration=1.0, slow_call_rate_threshold=1.0
    )
    second = b.acquire()
    b.record_success(1.0, first)
    assert state_of(b) == "half_open"
    b.record_success(3.0, second)
    assert state_of(b) == "open"
    assert seen[-1].slow_rate == 1.0


def test_half_open_closes_when_the_trials_stay_below_threshold() -> None:
    clock = FakeClock()
    b, _, first = open_then_half_open(
        clock, half_open_permitted_calls=4, failure_rate_threshold=0.5
    )
    rest = [b.acquire() for _ in range(3)]
    b.record_failure(0.1, first)  # 1/4 failed
    for permit in rest:
        b.record_success(0.1, permit)
    assert state_of(b) == "closed"


def test_a_released_trial_frees_its_permit() -> None:
    clock = FakeClock()
    b, _, first = open_then_half_open(clock, half_open_permitted_calls=1)
    with pytest.raises(CircuitOpen):
        b.acquire()
    b.release(first)
    assert state_of(b) == "half_open"
    second = b.acquire()
    b.record_success(0.1, second)
    assert state_of(b) == "closed"


def test_zero_wait_in_open_goes_half_open_on_the_next_acquire() -> None:
    clock = FakeClock()
    b, _ = make(clock, window_size=1, minimum_calls=1, wait_in_open=0.0)
    trip(b, 1)
    permit = b.acquire()
    assert permit.state == "half_open"
    b.record_success(0.0, permit)


# -- epochs and permits ------------------------------------------------------------------


def test_outcomes_of_calls_admitted_before_a_transition_are_ignored() -> None:
    clock = FakeClock()
    b, _ = make(clock, window_size=2, minimum_calls=2, wait_in_open=1.0)
    late_with_permit, late_without = b.acquire(), b.acquire()
    assert late_with_permit.epoch == 0
    trip(b, 2)
    clock.advance(1.0)
    trial = b.acquire()  # half-open, permitted calls 3
    b.record_failure(30.0, late_with_permit)
    b.record_failure(30.0)  # no permit: the oldest epoch in flight (closed) takes it
    snap = b.snapshot()
    assert (snap.state, snap.calls, snap.in_flight) == ("half_open", 0, 1)
    b.record_success(0.1, trial)
    assert b.snapshot().calls == 1
    del late_without


def test_without_permits_the_half_open_limit_still_holds() -> None:
    clock = FakeClock()
    b, _ = make(clock, window_size=1, minimum_calls=1, wait_in_open=1.0)
    b.acquire()  # a closed-epoch call that will finish late, out of order
    trip(b, 1)
    clock.advance(1.0)
    trials = [b.acquire() for _ in range(3)]
    # A trial finishes first, without its permit: booked against the closed epoch, so the
    # half-open stretch still counts three calls in flight and admits nobody new.
    b.release()
    with pytest.raises(CircuitOpen):
        b.acquire()
    assert b.snapshot().in_flight == 3
    del trials


def test_permit_misuse_is_reported() -> None:
    clock = FakeClock()
    b, _ = make(clock)
    other, _ = make(clock, name="dep-b")
    permit = b.acquire()
    with pytest.raises(ValueError, match="was not issued by breaker 'dep-b'"):
        other.record_success(0.1, permit)
    with pytest.raises(ValueError, match="duration must be a number >= 0"):
        b.record_success(-1.0, permit)
    with pytest.raises(ValueError, match="duration must be a number >= 0"):
        b.record_failure(float("nan"), permit)
    b.record_success(0.1, permit)  # the bad calls above consumed nothing
    with pytest.raises(RuntimeError, match="already settled"):
        b.release(permit)
    with pytest.raises(RuntimeError, match="without a matching acquire"):
        b.record_failure(0.1)
    assert "settled=True" in repr(permit)


# -- callbacks ---------------------------------------------------------------------------


def test_on_transition_runs_outside_the_lock_and_may_reenter() -> None:
    clock = FakeClock()
    seen: list[tuple[BreakerState, BreakerState, BreakerState]] = []
    breaker: list[CircuitBreaker] = []

    def on_transition(t: BreakerTransition) -> None:
        b = breaker[0]
        seen.append((t.from_state, t.to_state, b.snapshot().state))
        if t.to_state == "half_open":
            # Re-entering from the callback must not deadlock; the one trial permit is
            # held by the call that caused this transition.
            with pytest.raises(CircuitOpen):
                b.acquire()

    breaker.append(
        CircuitBreaker(
            name="d",
            window_size=1,
            minimum_calls=1,
            wait_in_open=1.0,
            clock=clock,
            half_open_permitted_calls=1,
            on_transition=on_transition,
        )
    )
    b = breaker[0]

    def drive() -> None:
        settle(b, "fail")
        clock.advance(1.0)
        settle(b, "ok")

    worker = threading.Thread(target=drive, name="breaker-drive")
    worker.start()
    worker.join(JOIN_TIMEOUT)
    assert not worker.is_alive(), "on_transition deadlocked the breaker"
    assert seen == [
        ("closed", "open", "open"),
        ("open", "half_open", "half_open"),
        ("half_open", "closed", "closed"),
    ]


def test_a_failing_callback_is_logged_and_does_not_break_calls(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def explode(t: BreakerTransition) -> None:
        raise RuntimeError("subscriber bug")

    b = CircuitBreaker(
        name="d", window_size=1, minimum_calls=1, clock=FakeClock(), on_transition=explode
    )
    with caplog.at_level(logging.ERROR, logger="dspy_actors.lm"):
        settle(b, "fail")
    assert state_of(b) == "open"
    assert "on_transition failed" in caplog.text


def test_snapshot_and_repr() -> None:
    clock = FakeClock()
    b, _ = make(clock, window_size=4, minimum_calls=4, slow_call_duration=1.0)
    held = b.acquire()
    settle(b, "ok", 2.0)
    settle(b, "fail", 0.5)
    snap = b.snapshot()
    assert snap.name == "dep-a"
    assert (snap.state, snap.calls, snap.failed_calls, snap.slow_calls) == ("closed", 2, 1, 1)
    assert (snap.failure_rate, snap.slow_rate) == (0.5, 0.5)
    assert (snap.in_flight, snap.retry_after, snap.transitions) == (1, None, 0)
    assert repr(b) == "CircuitBreaker(name='dep-a', state='closed')"
    b.release(held)


# -- the window and state machine against a simple model --------------------------------


@dataclass
class Model:
    """The breaker's rules written as plainly as possible (lists, recomputed rates)."""

    window_size: int
    minimum_calls: int
    failure_threshold: float
    slow_threshold: float
    slow_duration: float
    wait: float
    permitted: int
    state: str = "closed"
    epoch: int = 0
    opened_at: float = 0.0
    outcomes: list[tuple[bool, bool]] = field(default_factory=list)
    in_flight: list[int] = field(default_factory=list)  # admission epochs, oldest first

    def move(self, to: str, now: float) -> None:
        self.state, self.epoch, self.outcomes = to, self.epoch + 1, []
        if to == "open":
            self.opened_at = now

    def acquire(self, now: float) -> int | None:
        if self.state == "open":
            if now < self.opened_at + self.wait:
                return None
            self.move("half_open", now)
        elif self.state == "half_open":
            busy = self.in_flight.count(self.epoch) + len(self.outcomes)
            if busy >= self.permitted:
                return None
        self.in_flight.append(self.epoch)
        return self.epoch

    def settle(self, epoch: int | None, outcome: tuple[bool, bool] | None, now: float) -> None:
        if epoch is None:
            epoch = min(self.in_flight)
        # Calls settled without their permit are booked oldest first, so a permit's own
        # epoch may already be cleared: then the oldest call in flight is booked instead.
        self.in_flight.remove(epoch if epoch in self.in_flight else min(self.in_flight))
        if outcome is None or epoch != self.epoch:
            return
        self.outcomes.append(outcome)
        failed = sum(f for f, _ in self.outcomes)
        slow = sum(s for _, s in self.outcomes)
        if self.state == "closed":
            self.outcomes = self.outcomes[-self.window_size :]
            failed = sum(f for f, _ in self.outcomes)
            slow = sum(s for _, s in self.outcomes)
            n = len(self.outcomes)
            if n >= self.minimum_calls and (
                failed / n >= self.failure_threshold or slow / n >= self.slow_threshold
            ):
                self.move("open", now)
        elif self.state == "half_open":
            if (
                failed / self.permitted >= self.failure_threshold
                or slow / self.permitted >= self.slow_threshold
            ):
                self.move("open", now)
            elif len(self.outcomes) == self.permitted:
                self.move("closed", now)


THRESHOLDS = st.sampled_from([0.2, 0.25, 1 / 3, 0.5, 2 / 3, 0.75, 1.0])
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("acquire")),
        st.tuples(
            st.just("settle"),
            st.integers(0, 50),  # which outstanding call
            st.sampled_from(["ok", "fail", "release"]),
            st.sampled_from([0.0, 0.5, 1.0, 3.0]),
            st.booleans(),  # pass the permit back?
        ),
        st.tuples(st.just("advance"), st.sampled_from([0.25, 1.0, 4.0])),
    ),
    max_size=120,
)


@settings(max_examples=300, deadline=None)
@given(
    window_size=st.integers(1, 8),
    minimum_fraction=st.floats(0.0, 1.0),
    failure_threshold=THRESHOLDS,
    slow_threshold=THRESHOLDS,
    wait=st.sampled_from([0.0, 1.0, 2.5]),
    permitted=st.integers(1, 4),
    ops=OPS,
)
def test_breaker_matches_the_model(
    window_size: int,
    minimum_fraction: float,
    failure_threshold: float,
    slow_threshold: float,
    wait: float,
    permitted: int,
    ops: list[tuple[Any, ...]],
) -> None:
    minimum_calls = max(1, round(minimum_fraction * window_size))
    clock = FakeClock(0.0)
    transitions: list[BreakerTransition] = []
    b = CircuitBreaker(
        name="m",
        window_size=window_size,
        minimum_calls=minimum_calls,
        failure_rate_threshold=failure_threshold,
        slow_call_rate_threshold=slow_threshold,
        slow_call_duration=1.0,
        wait_in_open=wait,
        half_open_permitted_calls=permitted,
        clock=clock,
        on_transition=transitions.append,
    )
    model = Model(
        window_size, minimum_calls, failure_threshold, slow_threshold, 1.0, wait, permitted
    )
    outstanding: list[Permit] = []
    for op in ops:
        now = clock()
        if op[0] == "acquire":
            expected_epoch = model.acquire(now)
            rejection: CircuitOpen | None = None
            try:
                outstanding.append(b.acquire())
            except CircuitOpen as exc:
                rejection = exc
            if rejection is None:
                assert outstanding[-1].epoch == expected_epoch
            else:
                assert expected_epoch is None
                if rejection.state == "open":
                    assert rejection.retry_after == pytest.approx(model.opened_at + wait - now)
        elif op[0] == "settle" and outstanding:
            _, index, kind, duration, pass_permit = op
            permit = outstanding.pop(index % len(outstanding))
            outcome = None if kind == "release" else (kind == "fail", duration >= 1.0)
            model.settle(permit.epoch if pass_permit else None, outcome, now)
            given_permit = permit if pass_permit else None
            if kind == "ok":
                b.record_success(duration, given_permit)
            elif kind == "fail":
                b.record_failure(duration, given_permit)
            else:
                b.release(given_permit)
        elif op[0] == "advance":
            clock.advance(op[1])
        snap = b.snapshot()
        assert snap.state == model.state
        assert snap.transitions == model.epoch == len(transitions)
        assert snap.calls == len(model.outcomes)
        assert snap.failed_calls == sum(f for f, _ in model.outcomes)
        assert snap.slow_calls == sum(s for _, s in model.outcomes)
        if model.outcomes:
            assert snap.failure_rate == pytest.approx(snap.failed_calls / snap.calls)
            assert snap.slow_rate == pytest.approx(snap.slow_calls / snap.calls)
        assert snap.in_flight == len(model.in_flight)
    for previous, following in itertools.pairwise(transitions):
        assert previous.to_state == following.from_state


# -- many threads ------------------------------------------------------------------------


def test_32_threads_racing_keep_the_invariants() -> None:
    clock = FakeClock(0.0)
    permitted = 3
    transitions: list[BreakerTransition] = []
    b = CircuitBreaker(
        name="race",
        window_size=10,
        minimum_calls=5,
        failure_rate_threshold=0.5,
        slow_call_duration=1.0,
        slow_call_rate_threshold=0.8,
        wait_in_open=0.05,
        half_open_permitted_calls=permitted,
        clock=clock,
        on_transition=transitions.append,
    )
    books = threading.Lock()
    trials_in_flight: Counter[int] = Counter()
    peak = [0]
    violations: list[str] = []
    counts: Counter[str] = Counter()
    errors: list[BaseException] = []

    def caller(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(1500):
                clock.advance(0.0005)
                try:
                    permit = b.acquire()
                except CircuitOpen as exc:
                    counts[f"rejected-{exc.state}"] += 1
                    continue
                # Failures come in waves, so the breaker keeps opening and closing. The wave
                # is read when the permit is taken: read after a trial's hold, it would
                # depend on how far the other threads moved the clock meanwhile (on a busy
                # machine, a whole wave), and no trial might ever fail.
                bad_phase = int(clock() * 4) % 2 == 0
                kind = rng.choices(["ok", "fail", "release"], [1, 3 if bad_phase else 0.05, 0.3])[0]
                if permit.state == "half_open":
                    with books:
                        trials_in_flight[permit.epoch] += 1
                        peak[0] = max(peak[0], trials_in_flight[permit.epoch])
                        if trials_in_flight[permit.epoch] > permitted:
                            violations.append(f"{trials_in_flight[permit.epoch]} trials")
                    # Hold the trial a moment so that others race for the remaining permits.
                    time.sleep(0.001)
                duration = rng.choice([0.1, 0.1, 0.1, 2.0])
                if permit.state == "half_open":
                    with books:
                        trials_in_flight[permit.epoch] -= 1
                given_permit = permit if rng.random() < 0.5 else None
                if kind == "ok":
                    b.record_success(duration, given_permit)
                elif kind == "fail":
                    b.record_failure(duration, given_permit)
                else:
                    b.release(given_permit)
                counts[kind] += 1
        except BaseException as exc:  # surfaced by the assertions below
            errors.append(exc)

    threads = [
        threading.Thread(target=caller, args=(i,), name=f"breaker-race-{i}") for i in range(32)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(JOIN_TIMEOUT)
    assert not [t.name for t in threads if t.is_alive()]
    assert not errors
    assert not violations
    snap = b.snapshot()
    assert snap.in_flight == 0
    assert snap.transitions == len(transitions)  # every transition delivered, once
    assert transitions[0].from_state == "closed"
    for previous, following in itertools.pairwise(transitions):
        assert previous.to_state == following.from_state
        assert previous.at <= following.at
    assert transitions[-1].to_state == snap.state
    kinds = Counter((t.from_state, t.to_state) for t in transitions)
    assert set(kinds) == {
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "open"),
        ("half_open", "closed"),
    }, kinds
    assert counts["rejected-open"] > 0
    assert peak[0] == permitted  # the trials did overlap up to the limit
