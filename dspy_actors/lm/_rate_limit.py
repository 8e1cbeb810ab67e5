"""A rate limiter per LM deployment: requests per second and, optionally, LM tokens per minute.

Each limit is a token bucket: it holds at most ``burst`` units, refills continuously at its
rate, and a call takes its cost out of it (1 per request; ``cost_tokens`` from the
tokens-per-minute bucket). A call must satisfy every bucket at once.

Waiting callers *reserve*: ``acquire(timeout)`` computes when the buckets will cover its
cost, and if that is within ``timeout`` it takes the cost at once (a bucket may go into
debt) and sleeps until its moment; otherwise it returns ``False`` immediately, without
waiting and without taking anything. Reservations are served in the order the callers reach
the limiter, and a non-blocking ``try_acquire()`` succeeds only when nothing is owed, so
it can never overtake a waiting caller: no caller starves under steady load.

A request costing more tokens than the token bucket can hold is admitted once the bucket is
full, leaving the bucket in debt, so the long-run rate still holds. LM output tokens are only
known after the call: ``charge_tokens(n)`` takes (or, negative, returns) tokens without
waiting, so an estimate taken at ``acquire`` can be corrected afterwards.

Thread-safe; ``clock`` and ``sleep`` can be replaced (tests use a fake clock). The limiter
owns no threads: a waiting caller sleeps in its own thread.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

__all__ = ["RateLimiter"]


def _check_rate(name: str, value: object) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _check_amount(name: str, value: object) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


class _Bucket:
    """One token bucket; not thread-safe on its own (the limiter's lock guards it)."""

    __slots__ = ("capacity", "level", "per_second", "updated")

    def __init__(self, per_second: float, capacity: float, now: float) -> None:
        self.per_second = per_second
        self.capacity = capacity
        self.level = capacity
        self.updated = now

    def refill(self, now: float) -> None:
        # A clock that steps backwards (a fake one) must not drain the bucket.
        elapsed = now - self.updated
        if elapsed > 0:
            self.level = min(self.capacity, self.level + elapsed * self.per_second)
            self.updated = now

    def wait_for(self, cost: float) -> float:
        """Seconds until ``cost`` can be taken (a cost over capacity needs a full bucket)."""
        missing = min(cost, self.capacity) - self.level
        return missing / self.per_second if missing > 0 else 0.0


class RateLimiter:
    """Token-bucket limits on requests per second and (optionally) LM tokens per minute.

    ``burst`` is how many requests may go at once after an idle spell (default: one
    second's worth, at least 1); ``token_burst`` likewise for tokens (default: one minute's
    worth). At least one of ``requests_per_second`` and ``tokens_per_minute`` is required.
    """

    def __init__(
        self,
        *,
        requests_per_second: float | None = None,
        burst: float | None = None,
        tokens_per_minute: float | None = None,
        token_burst: float | None = None,
        name: str = "rate-limiter",
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if requests_per_second is None and tokens_per_minute is None:
            raise ValueError("give requests_per_second, tokens_per_minute, or both")
        if requests_per_second is None and burst is not None:
            raise ValueError("burst needs requests_per_second")
        if tokens_per_minute is None and token_burst is not None:
            raise ValueError("token_burst needs tokens_per_minute")
        if not callable(clock) or not callable(sleep):
            raise ValueError("clock and sleep must be callables")
        self.name = name
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        now = clock()
        self._requests: _Bucket | None = None
        self._tokens: _Bucket | None = None
        if requests_per_second is not None:
            rps = _check_rate("requests_per_second", requests_per_second)
            capacity = max(1.0, rps) if burst is None else _check_rate("burst", burst)
            if capacity < 1:
                raise ValueError(f"burst must be >= 1 (a request costs 1), got {burst!r}")
            self._requests = _Bucket(rps, capacity, now)
        if tokens_per_minute is not None:
            tpm = _check_rate("tokens_per_minute", tokens_per_minute)
            capacity = tpm if token_burst is None else _check_rate("token_burst", token_burst)
            self._tokens = _Bucket(tpm / 60.0, capacity, now)

    @property
    def requests_per_second(self) -> float | None:
        return None if self._requests is None else self._requests.per_second

    @property
    def tokens_per_minute(self) -> float | None:
        return None if self._tokens is None else self._tokens.per_second * 60.0

    def try_acquire(self, *, cost_tokens: float = 0) -> bool:
        """Take one request (and ``cost_tokens``) if available right now; never waits."""
        cost = _check_amount("cost_tokens", cost_tokens)
        with self._lock:
            if self._wait_locked(cost) > 0:
                return False
            self._take_locked(cost)
            return True

    def acquire(self, timeout: float, *, cost_tokens: float = 0) -> bool:
        """Take one request (and ``cost_tokens``), waiting at most ``timeout`` seconds.

        Returns ``False`` at once, taking nothing, if the wait would exceed ``timeout``.
        """
        limit = _check_amount("timeout", timeout)
        cost = _check_amount("cost_tokens", cost_tokens)
        with self._lock:
            wait = self._wait_locked(cost)
            if wait > limit:
                return False
            self._take_locked(cost)
        if wait > 0:
            self._sleep(wait)
        return True

    def time_until_available(self, *, cost_tokens: float = 0) -> float:
        """Seconds an ``acquire`` with this cost would wait now (0.0: it would not)."""
        cost = _check_amount("cost_tokens", cost_tokens)
        with self._lock:
            return self._wait_locked(cost)

    def charge_tokens(self, tokens: float) -> None:
        """Take ``tokens`` more (debt allowed), or give back ``-tokens``; never waits.

        For correcting an estimate once the call's real usage is known. No-op without a
        tokens-per-minute limit.
        """
        if (
            isinstance(tokens, bool)
            or not isinstance(tokens, int | float)
            or not math.isfinite(tokens)
        ):
            raise ValueError(f"tokens must be a finite number, got {tokens!r}")
        with self._lock:
            bucket = self._tokens
            if bucket is None:
                return
            bucket.refill(self._clock())
            bucket.level = min(bucket.capacity, bucket.level - tokens)

    def __repr__(self) -> str:
        return (
            f"RateLimiter(name={self.name!r}, requests_per_second={self.requests_per_second}, "
            f"tokens_per_minute={self.tokens_per_minute})"
        )

    def _wait_locked(self, cost_tokens: float) -> float:
        now = self._clock()
        wait = 0.0
        if self._requests is not None:
            self._requests.refill(now)
            wait = self._requests.wait_for(1.0)
        if self._tokens is not None and cost_tokens > 0:
            self._tokens.refill(now)
            wait = max(wait, self._tokens.wait_for(cost_tokens))
        return wait

    def _take_locked(self, cost_tokens: float) -> None:
        # Buckets were refilled by _wait_locked under the same lock hold.
        if self._requests is not None:
            self._requests.level -= 1.0
        if self._tokens is not None and cost_tokens > 0:
            self._tokens.level -= cost_tokens
