"""LM calls an event loop cannot make with ``LM.arun``: the user's own code.

An LM event loop (``runtime/_lm_loop.py``) runs a plain :class:`~dspy_actors.lm.LM`'s
request phase by phase (prepare, ``arun`` on the loop, settle). Anything else is the
user's code, which the loop must call as written, never skip:

- a :class:`~dspy_actors.lm.BaseLM` with ``aforward``, or any LM whose ``acomplete`` is
  its own (an ``LM`` subclass overriding it, an LM-like object with a coroutine
  ``acomplete``): awaited *on the loop*, as a task like the loop's own requests (cancelled
  when its caller gives up or the loop stops; the timeout cut to the deadline);
- a sync-only one (a ``BaseLM`` with only ``forward``, an ``LM`` subclass overriding
  ``complete``, an LM-like object with only ``complete``): it blocks, so it runs in a
  bounded thread pool beside the loop (at most ``MAX_THREADS`` per loop, fewer when the
  loop has fewer slots), holding its slot until it returns.

Either way the call keeps the pool's bound (it holds a slot), the circuit breaker counts
its outcome (``LMError``s the deployment's fault as failures; a ``BaseLM``'s own crash
is an ``LMForwardError``, counted too), fallbacks and rate limits apply as for any
deployment, and ``lm.start``/``lm.end`` events are published around it.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

from dspy_actors import redaction
from dspy_actors.lm._base_lm import BaseLM
from dspy_actors.lm._lm import LM
from dspy_actors.lm.errors import LMError
from dspy_actors.runtime._context import restored
from dspy_actors.runtime._futures import reject
from dspy_actors.runtime._lm_pool import TORN_DOWN_TWICE, Dispatcher, LMAttempt, Slot
from dspy_actors.runtime._loop_tasks import start_request_task

__all__ = ["MAX_THREADS", "UserCalls", "async_entry"]

# Threads per LM event loop for sync-only custom LMs (each blocks one while it runs).
MAX_THREADS = 64
_JOIN_SECONDS = 5.0

_log = redaction.get_logger("dspy_actors.runtime.lm")

AsyncComplete = Callable[..., Awaitable[Any]]


def async_entry(lm: object) -> AsyncComplete | None:
    """The coroutine that answers a call of ``lm`` on an event loop, or None if it only
    has blocking code (run in a thread)."""
    if isinstance(lm, BaseLM):
        return lm.acomplete if lm.has_aforward() else None
    if isinstance(lm, LM):
        own = type(lm).acomplete is not LM.acomplete
        return lm.acomplete if own else None  # an overridden complete() alone: a thread
    # An LM-like object's own class must define acomplete: one that forwards unknown
    # names to a wrapped LM (__getattr__) would otherwise have its own complete() skipped
    # for the wrapped LM's acomplete.
    if not inspect.iscoroutinefunction(getattr(type(lm), "acomplete", None)):
        return None
    acomplete: AsyncComplete = getattr(lm, "acomplete")  # noqa: B009 (bound, typed)
    return acomplete


class UserCalls:
    """The user-code calls of one LM event loop (see the module docstring)."""

    def __init__(
        self,
        name: str,
        loop: asyncio.AbstractEventLoop,
        dispatcher: Dispatcher,
        slots: int,
        tasks: set[asyncio.Task[None]],
        closing: Callable[[], bool],
    ) -> None:
        self._name = name
        self._loop = loop
        self._dispatcher = dispatcher
        self._threads = max(1, min(slots, MAX_THREADS))
        self._tasks = tasks  # the loop's own: cancelled, unanswered, when it stops
        self._closing = closing
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._stopped = False

    def send(self, slot: Slot, attempt: LMAttempt, lm: Any) -> None:
        """Start ``attempt``'s call (from the sender's thread); the slot frees when it ends."""
        acomplete = async_entry(lm)
        if acomplete is not None:
            try:
                self._loop.call_soon_threadsafe(self._begin, slot, attempt, acomplete)
            except RuntimeError:
                # The loop is closed: its actor is ending, and withdraws this slot with its
                # request (retried elsewhere) when it does.
                pass
            return
        with self._lock:
            if self._stopped:
                return  # the loop is ending: it withdraws the slot, the request is retried
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    self._threads, thread_name_prefix=f"{self._name}-forward"
                )
            self._executor.submit(self._run_blocking, slot, attempt, lm)

    # On the loop. ---------------------------------------------------------------------

    def _begin(self, slot: Slot, attempt: LMAttempt, acomplete: AsyncComplete) -> None:
        start_request_task(
            self._loop, self._tasks, self._call(slot, attempt, acomplete), attempt.request.reply
        )

    async def _call(self, slot: Slot, attempt: LMAttempt, acomplete: AsyncComplete) -> None:
        request = attempt.request
        began = time.monotonic()
        try:
            with restored(request.ctx):  # usage meters, settings: the caller's
                response = await acomplete(request.messages, **attempt.kwargs)
        except asyncio.CancelledError:
            if self._closing():
                raise  # unanswered: withdrawn with the slot, retried elsewhere
            self._finished(slot, "ignore", began)  # its caller gave up
            return
        except LMError as error:
            attempt.failed(error, partial(self._outcome, slot, began))
            return
        except Exception as error:  # a bug in the user's code: the caller's answer
            _log.exception("lm_call_failed", lm=repr(acomplete))
            reject(request.reply, error)
            self._finished(slot, "ignore", began)
            return
        attempt.succeeded(response, partial(self._outcome, slot, began))

    # In a thread. ---------------------------------------------------------------------

    def _run_blocking(self, slot: Slot, attempt: LMAttempt, lm: Any) -> None:
        began = time.monotonic()
        if attempt.request.reply.done():  # its caller gave up while it waited for a thread
            self._finished(slot, "ignore", began)
            return
        outcome = "ignore"
        try:
            outcome = attempt.run(lm)  # answers the reply (and logs nothing)
        except Exception:  # a bug below us: the caller has it as its answer
            _log.exception("lm_call_failed", lm=repr(lm))
        except BaseException:
            # The user's code tore its thread down (SystemExit, KeyboardInterrupt) without
            # answering: the request goes back to the pool, as a dead worker's, and the
            # exception goes on.
            if not self._stopped:
                duration = max(0.0, time.monotonic() - began)
                self._dispatcher.finished(slot, "ignore", duration, unanswered=TORN_DOWN_TWICE)
            raise
        self._finished(slot, outcome, began)

    # Either. --------------------------------------------------------------------------

    def _outcome(self, slot: Slot, began: float, outcome: str) -> None:
        self._finished(slot, outcome, began)

    def _finished(self, slot: Slot, outcome: str, began: float) -> None:
        # After the loop stopped, its slots are withdrawn (and a restarted loop's slots
        # have the same names): a late answer must not free one of those.
        if not self._stopped:
            self._dispatcher.finished(slot, outcome, max(0.0, time.monotonic() - began))

    def stop(self, timeout: float = _JOIN_SECONDS) -> None:
        """Drop the calls waiting for a thread (their slots are withdrawn and retried
        elsewhere) and wait, up to ``timeout`` seconds, for the running ones."""
        with self._lock:
            self._stopped = True
            executor, self._executor = self._executor, None
        if executor is None:
            return
        threads = list(getattr(executor, "_threads", ()))
        executor.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
