"""Waiting on a future from a served composite's ``forward()`` without holding a thread.

A served composite runs its user-written ``forward`` on a *forward greenlet* inside its
module actor (runtime/_module_actor.py). When that code waits (a sub-module call, a tool
result, any :class:`concurrent.futures.Future`), :func:`wait_future` switches the greenlet
out and hands the future back to the actor, which goes on serving other calls; when the
future completes (or the wait's timeout passes) the actor switches the greenlet back in,
in the actor's own thread. Sync code calls it the same way anywhere else: outside a
forward greenlet it simply blocks the calling thread, with the same timeout.

This is the one primitive for "wait on this future from a forward without blocking the
actor": sub-module proxies, pipelines and handles called from a forward use it, and so can
anything else a forward waits on (a served tool runner's result future, say)::

    from dspy_actors.waiting import wait_future

    def forward(self, question):
        result = wait_future(tool_runner.submit(question), timeout=30.0)
        ...

Why greenlets: the user's ``forward`` is ordinary synchronous code (DSPy's programming
model); a greenlet lets it pause in the middle of a call stack, which a generator or a
coroutine cannot do without the user rewriting it. Timeouts are kept by one shared timer
thread that only runs while some forward wait has a timeout pending.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import threading
import time
from collections.abc import Callable, Collection
from concurrent.futures import FIRST_COMPLETED, CancelledError, Future, InvalidStateError
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass
from typing import Any

import greenlet

__all__ = [
    "ForwardGreenlet",
    "Park",
    "in_forward_greenlet",
    "pause",
    "timers",
    "wait_any",
    "wait_done",
    "wait_future",
]


class ForwardGreenlet(greenlet.greenlet):  # type: ignore[misc]
    """The greenlet a module actor runs one call's ``forward`` on. Its parent is the
    actor's thread's main greenlet: switching to it hands control back to the actor."""


@dataclass(frozen=True, slots=True, eq=False)
class Park:
    """What a forward greenlet hands its actor when it waits: resume me once ``future``
    is done, or at ``deadline`` (a ``time.monotonic()`` instant; None: no timeout)."""

    future: Future[Any]
    deadline: float | None


def in_forward_greenlet() -> bool:
    """Whether this code runs on a forward greenlet (so waits switch out, not block)."""
    return isinstance(greenlet.getcurrent(), ForwardGreenlet)


def wait_done(future: Future[Any], timeout: float | None) -> bool:
    """Wait until ``future`` is done or ``timeout`` seconds pass; whether it is done.

    On a forward greenlet the greenlet is parked (its actor serves other calls meanwhile);
    elsewhere the calling thread blocks. ``timeout`` None waits until done: callers in
    actor code always pass a bound.
    """
    if future.done():
        return True
    current = greenlet.getcurrent()
    if isinstance(current, ForwardGreenlet):
        deadline = None if timeout is None else time.monotonic() + timeout
        current.parent.switch(Park(future, deadline))
        return future.done()
    # Waits on the future's own condition: futures.wait would make a waiter and an Event
    # per call, which costs a blocking caller more than the rest of its bookkeeping.
    try:
        future.exception(timeout)
    except FutureTimeout:
        return False
    except CancelledError:
        pass
    return True


def wait_any(futures: Collection[Future[Any]], timeout: float | None) -> set[Future[Any]]:
    """Wait until at least one of ``futures`` is done or ``timeout`` seconds pass; the
    ones that are done. Parks a forward greenlet (like :func:`wait_done`) instead of
    blocking its actor; elsewhere the calling thread blocks."""
    done = {f for f in futures if f.done()}
    if done or not futures:
        return done
    if not in_forward_greenlet():
        finished, _ = futures_wait(list(futures), timeout=timeout, return_when=FIRST_COMPLETED)
        return set(finished)
    first: Future[None] = Future()

    def mark(_: Future[Any]) -> None:
        with contextlib.suppress(InvalidStateError):
            first.set_result(None)

    for future in futures:
        future.add_done_callback(mark)
    wait_done(first, timeout)
    return {f for f in futures if f.done()}


def wait_future(future: Future[Any], timeout: float | None = None) -> Any:
    """``future.result(timeout)`` that parks a forward greenlet instead of blocking its
    actor. Raises ``concurrent.futures.TimeoutError`` if it is not done in time, or the
    future's own exception."""
    if not wait_done(future, timeout):
        raise FutureTimeout(f"the future was not done within {timeout} s")
    return future.result(timeout=0)


def pause(seconds: float) -> None:
    """``time.sleep`` that parks a forward greenlet instead of blocking its actor."""
    if in_forward_greenlet():
        wait_done(Future(), seconds)  # a future nobody completes: only the timer wakes it
    else:
        time.sleep(seconds)


_LINGER_SECONDS = 0.05


class Timers:
    """Callbacks at monotonic instants, run by one thread that exists only while some
    timer is pending, and a moment after (so an idle process holds no timer thread).
    Callbacks must be quick: they tell an actor, nothing more."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int]] = []
        self._live: dict[int, Callable[[], None]] = {}
        self._ids = itertools.count(1)
        self._thread: threading.Thread | None = None

    def schedule(self, deadline: float, callback: Callable[[], None]) -> int:
        """Run ``callback`` at ``deadline``; a handle for :meth:`cancel`."""
        with self._cond:
            timer_id = next(self._ids)
            self._live[timer_id] = callback
            heapq.heappush(self._heap, (deadline, timer_id))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="dspy-actors-timers", daemon=True
                )
                self._thread.start()
            else:
                self._cond.notify()
            return timer_id

    def cancel(self, timer_id: int) -> None:
        with self._cond:
            if self._live.pop(timer_id, None) is not None and not self._live:
                self._heap.clear()
                self._cond.notify()  # nothing left: the thread ends (after its linger)

    def pending(self) -> int:
        with self._cond:
            return len(self._live)

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    if not self._live:
                        # Linger a moment: a sequential caller's next wait comes soon, and
                        # would otherwise start a new thread each time.
                        self._cond.wait(timeout=_LINGER_SECONDS)
                        if not self._live:
                            self._thread = None
                            return
                        continue
                    deadline, timer_id = self._heap[0]
                    if timer_id not in self._live:
                        heapq.heappop(self._heap)
                        continue
                    delay = deadline - time.monotonic()
                    if delay <= 0:
                        heapq.heappop(self._heap)
                        callback = self._live.pop(timer_id)
                        break
                    self._cond.wait(timeout=delay)
            try:
                callback()
            except Exception:  # a callback's failure must not stop every other timer
                pass


timers = Timers()
