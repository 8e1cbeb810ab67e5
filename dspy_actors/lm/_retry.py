"""Retrying LM requests: exponential backoff with full jitter, honoring the server's delay.

Only errors whose ``retryable`` flag is set are retried (429, 5xx, timeouts, broken
connections, malformed bodies); a 400, 401 or context-window error fails at once. When the
server says how long to wait (``Retry-After`` in seconds or as an HTTP date, or
``retry-after-ms``), that delay is used instead of the backoff, capped by
``max_retry_after``.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import TypeVar

from dspy_actors.lm.errors import LMError

__all__ = [
    "RetryLoop",
    "RetryPolicy",
    "call_with_retries",
    "parse_retry_after",
    "retry_delay",
]

T = TypeVar("T")
log = logging.getLogger("dspy_actors.lm")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``max_retries`` extra attempts after the first; backoff before retry ``k`` (0-based)
    is uniform in ``[0, min(max_delay, base_delay * 2**k)]`` ("full jitter")."""

    max_retries: int = 3
    base_delay: float = 0.5
    max_delay: float = 20.0
    max_retry_after: float = 60.0


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait according to ``retry-after-ms`` or ``Retry-After``, if present.

    ``headers`` must be case-insensitive (httpx.Headers) or lower-cased.
    """
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def retry_delay(error: LMError, attempt: int, policy: RetryPolicy, rng: random.Random) -> float:
    """How long to sleep before retry number ``attempt`` (0-based) after ``error``."""
    if error.retry_after is not None:
        return min(error.retry_after, policy.max_retry_after)
    return rng.uniform(0.0, min(policy.max_delay, policy.base_delay * (2**attempt)))


class RetryLoop:
    """One request's retries: which attempt failed, and whether (and after what wait) the
    next is made. The one retry decision of every way an LM sends, whole or streamed, sync
    or async; each sleeps the wait its own way (``time.sleep``, ``asyncio.sleep``)."""

    __slots__ = ("_attempt", "_deadline", "_on_retry", "_policy", "_rng")

    def __init__(
        self,
        policy: RetryPolicy,
        rng: random.Random | None = None,
        on_retry: Callable[[LMError, float], None] | None = None,
        deadline: float | None = None,
    ) -> None:
        """``deadline``: a ``time.monotonic()`` instant; a retry that would start after it
        is not made."""
        self._policy = policy
        self._rng = rng or random.Random()
        self._on_retry = on_retry
        self._deadline = deadline
        self._attempt = 0

    def wait_after(self, exc: LMError) -> float | None:
        """The wait before the next attempt after ``exc`` (logged, told to ``on_retry``),
        or None: not retried (not retryable, retries used up, or past the deadline)."""
        delay = _planned_retry(
            exc, self._attempt, self._policy, self._rng, self._on_retry, self._deadline
        )
        if delay is not None:
            self._attempt += 1
        return delay


def call_with_retries(
    attempt_fn: Callable[[], T],
    policy: RetryPolicy,
    *,
    rng: random.Random | None = None,
    sleep: Callable[[float], None] = time.sleep,
    on_retry: Callable[[LMError, float], None] | None = None,
    deadline: float | None = None,
) -> T:
    """Run ``attempt_fn`` until it succeeds, a non-retryable error occurs, or the retries
    run out (then the last error is raised). With a ``deadline`` (a ``time.monotonic()``
    instant), a retry that would start after it is not made: the last error is raised."""
    retries = RetryLoop(policy, rng, on_retry, deadline)
    while True:
        try:
            return attempt_fn()
        except LMError as exc:
            delay = retries.wait_after(exc)
            if delay is None:
                raise
            sleep(delay)


def _planned_retry(
    exc: LMError,
    attempt: int,
    policy: RetryPolicy,
    rng: random.Random,
    on_retry: Callable[[LMError, float], None] | None,
    deadline: float | None,
) -> float | None:
    """The wait before retrying after ``exc`` failed attempt ``attempt`` (logged, and told
    to ``on_retry``), or None when it is not retried: not retryable, retries used up, or
    the retry would start past ``deadline``. One decision for the sync and async loops."""
    if not exc.retryable or attempt >= policy.max_retries:
        return None
    delay = retry_delay(exc, attempt, policy, rng)
    if deadline is not None and time.monotonic() + delay >= deadline:
        return None
    log.info(
        "LM call failed (%s); retry %d/%d in %.3fs", exc, attempt + 1, policy.max_retries, delay
    )
    if on_retry is not None:
        on_retry(exc, delay)
    return delay
