"""RateLimiter: burst, sustained rate, token budgets, timeouts, and many threads."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from dspy_actors.lm._rate_limit import RateLimiter
from dspy_actors.testing._clock import FakeClock
from dspy_actors.testing._polling import wait_until

JOIN_TIMEOUT = 30.0


class RecordingSleep:
    """A sleep that only records how long it was asked to sleep."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        with self._lock:
            self.calls.append(seconds)


def limiter(clock: FakeClock, sleep: RecordingSleep | None = None, **kw: Any) -> RateLimiter:
    return RateLimiter(clock=clock, sleep=sleep or RecordingSleep(), **kw)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({}, "give requests_per_second, tokens_per_minute, or both"),
        ({"requests_per_second": 0}, "requests_per_second must be a finite number > 0"),
        ({"requests_per_second": -1}, "requests_per_second must be"),
        ({"requests_per_second": float("inf")}, "requests_per_second must be"),
        ({"requests_per_second": True}, "requests_per_second must be"),
        ({"requests_per_second": 5, "burst": 0.5}, "burst must be >= 1"),
        ({"requests_per_second": 5, "burst": 0}, "burst must be a finite number > 0"),
        ({"tokens_per_minute": 1000, "burst": 3}, "burst needs requests_per_second"),
        ({"requests_per_second": 5, "token_burst": 3}, "token_burst needs tokens_per_minute"),
        ({"tokens_per_minute": float("nan")}, "tokens_per_minute must be"),
        ({"tokens_per_minute": 60, "token_burst": -5}, "token_burst must be"),
        ({"requests_per_second": 5, "clock": 3}, "clock and sleep must be callables"),
    ],
)
def test_bad_parameters_are_rejected_clearly(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RateLimiter(**kw)


def test_bad_call_arguments_are_rejected_clearly() -> None:
    rl = limiter(FakeClock(100.0), requests_per_second=1, tokens_per_minute=60)
    with pytest.raises(ValueError, match="timeout must be a finite number >= 0"):
        rl.acquire(-1)
    with pytest.raises(ValueError, match="timeout must be"):
        rl.acquire(float("inf"))
    with pytest.raises(ValueError, match="cost_tokens must be"):
        rl.try_acquire(cost_tokens=-3)
    with pytest.raises(ValueError, match="cost_tokens must be"):
        rl.time_until_available(cost_tokens=float("nan"))
    with pytest.raises(ValueError, match="tokens must be a finite number"):
        rl.charge_tokens(float("inf"))
    assert rl.try_acquire()  # nothing above took anything


def test_burst_then_the_rate() -> None:
    # Times and rates are powers of two so that the float arithmetic is exact.
    clock = FakeClock(0.0)
    rl = limiter(clock, requests_per_second=8, burst=4)
    assert [rl.try_acquire() for _ in range(5)] == [True] * 4 + [False]
    assert rl.time_until_available() == 0.125
    clock.advance(0.0625)
    assert not rl.try_acquire()
    assert rl.time_until_available() == 0.0625
    clock.advance(0.0625)
    assert rl.try_acquire()
    clock.advance(64.0)  # idle time refills only up to the burst
    assert sum(rl.try_acquire() for _ in range(20)) == 4


def test_default_burst_is_one_second_of_requests() -> None:
    rl = limiter(FakeClock(100.0), requests_per_second=4)
    assert sum(rl.try_acquire() for _ in range(10)) == 4
    slow = limiter(FakeClock(100.0), requests_per_second=0.5)
    assert sum(slow.try_acquire() for _ in range(10)) == 1
    assert (rl.requests_per_second, rl.tokens_per_minute) == (4.0, None)


def test_the_rate_holds_over_simulated_time() -> None:
    clock = FakeClock(0.0)
    rate, burst = 32.0, 4.0
    rl = limiter(clock, requests_per_second=rate, burst=burst)
    step = 1 / 64  # exact in binary, so the sums below are exact too
    granted = 0
    while rl.try_acquire():  # the burst, at time 0
        granted += 1
    assert granted == burst
    for tick in range(1, 64 * 10 + 1):
        clock.advance(step)
        while rl.try_acquire():
            granted += 1
        elapsed = tick * step
        assert granted <= burst + rate * elapsed
        assert granted >= burst + rate * elapsed - 1  # and nothing is held back
    assert granted == burst + rate * 10


def test_acquire_waits_for_its_slot() -> None:
    clock = FakeClock(100.0)
    sleep = RecordingSleep()
    rl = limiter(clock, sleep, requests_per_second=10, burst=1)
    assert rl.acquire(timeout=1.0)
    assert sleep.calls == []  # available at once: no sleep at all
    assert rl.acquire(timeout=1.0)
    assert sleep.calls == [pytest.approx(0.1)]


def test_timeout_returns_false_without_waiting_or_taking() -> None:
    clock = FakeClock(100.0)
    sleep = RecordingSleep()
    rl = limiter(clock, sleep, requests_per_second=2, burst=1)
    assert rl.try_acquire()
    assert not rl.acquire(timeout=0.4)  # the next slot is 0.5 s away
    assert not rl.acquire(timeout=0.0)
    assert sleep.calls == []
    assert rl.time_until_available() == pytest.approx(0.5)  # nothing was reserved
    assert rl.acquire(timeout=0.5)
    assert sleep.calls == [pytest.approx(0.5)]


def test_waiters_reserve_in_order_and_try_acquire_cannot_overtake_them() -> None:
    clock = FakeClock(100.0)
    sleep = RecordingSleep()
    rl = limiter(clock, sleep, requests_per_second=4, burst=1)
    assert rl.try_acquire()
    for _ in range(3):
        assert rl.acquire(timeout=10)
    assert sleep.calls == [pytest.approx(0.25), pytest.approx(0.5), pytest.approx(0.75)]
    clock.advance(0.5)
    assert not rl.try_acquire()  # slots up to 0.75 s are promised to the waiters
    assert rl.time_until_available() == pytest.approx(0.5)
    clock.advance(0.5)
    assert rl.try_acquire()


def test_tokens_per_minute_budget() -> None:
    clock = FakeClock(100.0)
    sleep = RecordingSleep()
    rl = limiter(clock, sleep, tokens_per_minute=600, token_burst=100)  # 10 tokens/s
    assert rl.tokens_per_minute == pytest.approx(600)
    assert rl.requests_per_second is None
    assert rl.try_acquire(cost_tokens=80)
    assert not rl.try_acquire(cost_tokens=30)
    assert rl.try_acquire(cost_tokens=20)
    assert rl.try_acquire()  # no request limit: a call without tokens always passes
    assert rl.time_until_available(cost_tokens=50) == pytest.approx(5.0)
    assert not rl.acquire(timeout=4.9, cost_tokens=50)
    assert rl.acquire(timeout=5.0, cost_tokens=50)
    assert sleep.calls == [pytest.approx(5.0)]


def test_requests_and_tokens_must_both_allow_the_call() -> None:
    clock = FakeClock(100.0)
    rl = limiter(clock, requests_per_second=100, tokens_per_minute=60, token_burst=10)
    assert rl.try_acquire(cost_tokens=10)
    assert not rl.try_acquire(cost_tokens=1)  # requests left, tokens not
    assert rl.time_until_available(cost_tokens=1) == pytest.approx(1.0)
    requests_only = limiter(clock, requests_per_second=1, burst=1)
    assert requests_only.try_acquire(cost_tokens=10**9)  # tokens ignored without a budget
    assert not requests_only.try_acquire()


def test_a_request_larger_than_the_token_burst_waits_for_a_full_bucket_then_owes() -> None:
    clock = FakeClock(100.0)
    rl = limiter(clock, tokens_per_minute=60, token_burst=10)  # 1 token/s
    assert rl.try_acquire(cost_tokens=4)
    assert rl.time_until_available(cost_tokens=25) == pytest.approx(4.0)
    clock.advance(4.0)
    assert rl.try_acquire(cost_tokens=25)
    # 15 tokens of debt: the next token is 16 s away, so the long-run rate holds.
    assert rl.time_until_available(cost_tokens=1) == pytest.approx(16.0)


def test_charge_tokens_corrects_an_estimate() -> None:
    clock = FakeClock(100.0)
    rl = limiter(clock, tokens_per_minute=60, token_burst=10)
    assert rl.try_acquire(cost_tokens=5)
    rl.charge_tokens(8)  # the answer was longer than estimated: 3 tokens of debt
    assert rl.time_until_available(cost_tokens=1) == pytest.approx(4.0)
    rl.charge_tokens(-100)  # refunds never overfill the bucket
    assert rl.try_acquire(cost_tokens=10)
    assert not rl.try_acquire(cost_tokens=1)
    limiter(clock, requests_per_second=1).charge_tokens(5)  # no token budget: no-op


def test_a_clock_stepping_back_does_not_drain_the_bucket() -> None:
    clock = FakeClock(100.0)
    rl = limiter(clock, requests_per_second=1, burst=2)
    clock.advance(-50)
    assert rl.try_acquire()
    assert rl.try_acquire()
    assert "requests_per_second=1.0" in repr(rl)


def test_16_threads_reserving_never_exceed_the_rate() -> None:
    # The clock stands still, so each grant's wait is exactly its slot after "now":
    # the k-th slot (0-based) must be no earlier than (k + 1 - burst) / rate.
    clock = FakeClock(100.0)
    sleep = RecordingSleep()
    rate, burst, per_thread = 50.0, 3.0, 25
    rl = limiter(clock, sleep, requests_per_second=rate, burst=burst)
    results: list[bool] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(per_thread):
            ok = rl.acquire(timeout=1000.0)
            with lock:
                results.append(ok)

    threads = [threading.Thread(target=worker, name=f"rate-reserve-{i}") for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(JOIN_TIMEOUT)
    assert not [t.name for t in threads if t.is_alive()]
    assert results == [True] * (16 * per_thread)
    slots = sorted([0.0] * (len(results) - len(sleep.calls)) + sleep.calls)
    assert slots[: int(burst)] == [0.0] * int(burst)
    for k, slot in enumerate(slots):
        assert slot == pytest.approx(max(0.0, (k + 1 - burst) / rate))


def test_16_threads_polling_never_exceed_the_rate_as_time_passes() -> None:
    clock = FakeClock(0.0)
    rate, burst = 32.0, 4.0
    rl = limiter(clock, requests_per_second=rate, burst=burst)
    granted = [0]
    lock = threading.Lock()
    stop = threading.Event()

    def poller() -> None:
        while not stop.is_set():
            if rl.try_acquire():
                with lock:
                    granted[0] += 1
            else:
                time.sleep(0.001)

    threads = [threading.Thread(target=poller, name=f"rate-poll-{i}") for i in range(16)]
    for t in threads:
        t.start()
    try:
        step = 1 / 64
        for tick in range(1, 129):
            clock.advance(step)
            time.sleep(0.001)  # let the pollers run; the clock alone decides what they get
            with lock:
                # Every grant so far happened at a clock reading <= tick * step.
                assert granted[0] <= burst + rate * tick * step
        total = burst + rate * 128 * step
        # A wait on the outcome, not on the pollers getting CPU within a fixed time (16
        # spinning threads on a busy machine can take a while to drain what is due).
        wait_until(lambda: granted[0] >= total, timeout=60.0, what=f"{total:g} grants")
    finally:
        stop.set()
        for t in threads:
            t.join(JOIN_TIMEOUT)
    assert not [t.name for t in threads if t.is_alive()]
    assert granted[0] == total  # all of it was handed out, and not one more


def test_real_clock_blocking_acquire_spaces_calls_out() -> None:
    rate = 100.0
    rl = RateLimiter(requests_per_second=rate, burst=1)
    grants: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(5):
            if rl.acquire(timeout=10.0):
                with lock:
                    grants.append(time.monotonic())

    start = time.monotonic()
    threads = [threading.Thread(target=worker, name=f"rate-real-{i}") for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(JOIN_TIMEOUT)
    assert not [t.name for t in threads if t.is_alive()]
    assert len(grants) == 40
    # A lower bound only: 40 grants at 100/s with a burst of 1 need at least 0.39 s.
    assert max(grants) - start >= (40 - 1) / rate - 0.005
