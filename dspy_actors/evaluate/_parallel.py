"""Bounded, order-preserving parallel map over threads, carrying settings into each thread.

Settings overrides (``dsa.context(lm=...)``) live in contextvars, which a new thread does not
inherit: each task runs in a copy of the submitting thread's context.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TypeVar

from dspy_actors.evaluate._executor import current_executor

__all__ = ["Cancelled", "parallel_map"]

T = TypeVar("T")
R = TypeVar("R")

_POLL_SECONDS = 0.05


class Cancelled(RuntimeError):
    """Work stopped because its run was cancelled."""


def _limited(fn: Callable[[T], R], limiter: threading.Semaphore) -> Callable[[T], R]:
    def run(item: T) -> R:
        with limiter:
            return fn(item)

    return run


def parallel_map(
    fn: Callable[[T], R],
    items: Sequence[T],
    *,
    num_threads: int,
    cancel: threading.Event | None = None,
    limiter: threading.Semaphore | None = None,
    thread_name_prefix: str = "dsa-parallel",
    local: bool = False,
) -> list[R]:
    """``[fn(x) for x in items]`` on at most ``num_threads`` threads, results in input order.

    The first exception (in input order) is raised once every started task has finished;
    ``cancel`` being set stops submitting and raises :class:`Cancelled`. ``limiter``, if
    given, is held around each call: several maps sharing one limiter together run at
    most its count of calls at once.

    Inside ``use_executor(...)`` (evaluate/_executor.py) the items go to that executor
    instead (``num_threads`` and ``limiter`` bound local threads only), unless ``local``:
    work that must stay in this process (a plan's steps, which checkpoint here).
    """
    if not items:
        return []
    executor = None if local else current_executor()
    if executor is not None:
        outcomes = executor.map_outcomes(fn, items, cancel=cancel)
        for outcome in outcomes:
            if outcome.error is not None:
                raise outcome.error
        return [outcome.value for outcome in outcomes]  # type: ignore[misc]
    if limiter is not None:
        fn = _limited(fn, limiter)
    workers = max(1, min(num_threads, len(items)))
    if workers == 1:
        out: list[R] = []
        for item in items:
            if cancel is not None and cancel.is_set():
                raise Cancelled("cancelled")
            out.append(fn(item))
        return out
    results: dict[int, R] = {}
    errors: dict[int, BaseException] = {}
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=thread_name_prefix)
    try:
        in_flight: dict[Future[R], int] = {}
        next_index = 0
        while next_index < len(items) or in_flight:
            stop = cancel is not None and cancel.is_set()
            while not stop and next_index < len(items) and len(in_flight) < workers:
                ctx = contextvars.copy_context()
                fut = pool.submit(ctx.run, fn, items[next_index])
                in_flight[fut] = next_index
                next_index += 1
            if stop and not in_flight:
                raise Cancelled("cancelled")
            done, _ = wait(list(in_flight), timeout=_POLL_SECONDS, return_when=FIRST_COMPLETED)
            for fut in done:
                index = in_flight.pop(fut)
                exc = fut.exception()
                if exc is not None:
                    errors[index] = exc
                else:
                    results[index] = fut.result()
            if errors and not in_flight:
                break
            if errors:
                next_index = len(items)  # stop submitting; drain what runs
        if errors:
            raise errors[min(errors)]
        if len(results) != len(items):
            raise Cancelled("cancelled")
        return [results[i] for i in range(len(items))]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
