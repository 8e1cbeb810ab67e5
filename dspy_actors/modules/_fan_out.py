"""Running several calls at once, bounded, and waiting for all of them (never forever).

``BestOfN`` (served) and ``Parallel`` fan their attempts or branches out through
:func:`fan_out`. All of the waiting is in this one function, so that a runtime running
composites' ``forward`` another way (greenlets, asyncio) can swap the waiting here alone.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from dspy_actors.waiting import wait_any

__all__ = ["FanOutTimeout", "NotRun", "Outcome", "fan_out", "is_served"]

T = TypeVar("T")

_WAIT_SLICE_SECONDS = 0.5


class FanOutTimeout(TimeoutError):
    """A fanned-out call did not finish within its time limit."""


@dataclass(frozen=True, slots=True)
class Outcome(Generic[T]):
    """What one fanned-out call did: its value, or the exception it raised."""

    value: T | None = None
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def is_served(module: Any) -> bool:
    """Whether ``module`` stands for a module served by actors (a proxy to its actor): its
    calls then run on other actors, and fanning them out runs them at once."""
    return bool(getattr(module, "is_actor_proxy", False))


def fan_out(
    calls: Sequence[Callable[[], T]],
    *,
    max_workers: int,
    timeout: float,
    stop: Callable[[Sequence[Outcome[T] | None]], bool] | None = None,
    thread_name_prefix: str = "dsa-fan-out",
) -> list[Outcome[T]]:
    """Run ``calls`` with at most ``max_workers`` at once; one :class:`Outcome` each, in
    order. Each call runs in a copy of this thread's context (settings overrides, the
    running call's trace and deadline travel with it).

    ``stop(outcomes_so_far)`` (None for those not finished) may end the fan-out early: no
    more calls start, those running are waited for. A call not finished ``timeout``
    seconds after the fan-out began gets a :class:`FanOutTimeout` outcome (its thread is
    left to finish on its own: the calls beneath it have their own time limits).
    """
    outcomes: list[Outcome[T] | None] = [None] * len(calls)
    if not calls:
        return []
    workers = max(1, min(max_workers, len(calls)))
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=thread_name_prefix)
    deadline = time.monotonic() + timeout
    running: dict[Future[T], int] = {}
    next_index = 0
    stopped = False
    try:
        while next_index < len(calls) or running:
            while not stopped and next_index < len(calls) and len(running) < workers:
                ctx = contextvars.copy_context()
                running[pool.submit(ctx.run, calls[next_index])] = next_index
                next_index += 1
            left = deadline - time.monotonic()
            if left <= 0:
                for index in running.values():
                    outcomes[index] = Outcome(
                        error=FanOutTimeout(f"call {index} did not finish within {timeout}s")
                    )
                running.clear()
                break
            # Served, this runs on the composite's forward greenlet: wait_any parks it, so
            # its module actor serves other calls while the branches run.
            done = wait_any(list(running), timeout=min(left, _WAIT_SLICE_SECONDS))
            for future in done:
                index = running.pop(future)
                error = future.exception()
                outcomes[index] = (
                    Outcome(error=error) if error is not None else Outcome(value=future.result())
                )
            if done and stop is not None and not stopped and stop(outcomes):
                stopped = True
                next_index = len(calls)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    return [o if o is not None else Outcome(error=NotRun()) for o in outcomes]


class NotRun(RuntimeError):
    """A call that was never started because the fan-out stopped early."""

    def __init__(self) -> None:
        super().__init__("not run: the fan-out stopped early")
