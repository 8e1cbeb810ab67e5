"""LM rate limits across a Ray cluster: one named Ray actor holds the token buckets.

Every worker's LM asks the same actor (``ClusterRateLimiter``, named per limit) for a
reservation before each request. The actor only books: it takes the cost from its buckets
and answers how long the caller must wait, and the caller sleeps in its own process, so a
slow bucket never blocks the actor and reservations are served in arrival order (the
bucket logic is the process-local :class:`~dspy_actors.lm._rate_limit.RateLimiter`'s). The
cost is one round trip to the actor per LM request (bench/bench_ray.py measures it).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

from dspy_actors.lm._rate_limit import RateLimiter

__all__ = ["ClusterRateLimitedLM", "RateLimitBooking", "limiter_actor"]

ACTOR_PREFIX = "dsa-rate-limit:"


class RateLimitBooking:
    """The state of the named actor: books reservations, never sleeps."""

    def __init__(self, options: Mapping[str, Any]) -> None:
        self._booked = threading.local()
        self._limiter = RateLimiter(**dict(options), sleep=self._note_wait)

    def _note_wait(self, seconds: float) -> None:
        self._booked.wait = seconds

    def reserve(self, timeout: float) -> float | None:
        """Take one request's cost; the seconds the caller must wait before sending it, or
        None if that would be over ``timeout`` (nothing taken)."""
        self._booked.wait = 0.0
        if not self._limiter.acquire(timeout):
            return None
        return float(self._booked.wait)


def limiter_actor(name: str, options: Mapping[str, Any]) -> Any:
    """The cluster's limiter actor called ``name`` (created on first use, then shared by
    every driver and worker that asks for the same name; the first one's ``options``
    hold until the cluster stops, as the actor is detached)."""
    import ray

    remote_cls: Any = ray.remote(num_cpus=0, max_restarts=-1)(RateLimitBooking)
    return remote_cls.options(
        name=ACTOR_PREFIX + name,
        namespace="dspy-actors",
        get_if_exists=True,
        lifetime="detached",
    ).remote(dict(options))


class ClusterRateLimitedLM:
    """Stands in for a worker's LM: each request first gets a reservation from the
    cluster's limiter actor. Every other attribute is the wrapped LM's."""

    def __init__(self, lm: Any, actor: Any, timeout: float = 600.0) -> None:
        self._lm = lm
        self._actor = actor
        self._timeout = timeout

    def __getattr__(self, name: str) -> Any:
        return getattr(self._lm, name)

    def complete(self, messages: list[dict[str, Any]], **kwargs: Any) -> Any:
        import ray

        if self._lm.cached(messages, **kwargs) is None:  # a cache hit sends no request
            wait = ray.get(self._actor.reserve.remote(self._timeout), timeout=self._timeout)
            if wait is None:
                raise TimeoutError(
                    f"the cluster's LM rate limit has no room within {self._timeout}s"
                )
            if wait > 0:
                time.sleep(wait)
        return self._lm.complete(messages, **kwargs)

    def __repr__(self) -> str:
        return f"ClusterRateLimitedLM({self._lm!r})"
