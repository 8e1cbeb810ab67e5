"""LM event loops: the LM pool's workers by default (``dsa.start(lm_loops=1)``).

Each :class:`LMLoop` actor, under the pool's supervisor, owns one thread running an asyncio
event loop, as an Erlang port is owned by the process that opened it. It offers ``slots``
workers to the pool's dispatcher (``lm_max_in_flight`` spread over the loops); a request
handed to a slot is prepared in the sending thread (``LM.prepare``: parameters resolved in
the caller's context, the deadline and the LM's own timeout carried), then handed to the
loop with ``call_soon_threadsafe``, where ``LM.arun`` posts it (``lm/_aio_posts.py``) and
``LM.settle`` accounts the answer in the caller's context. A request in flight costs a
socket and a task, never a thread: 4,096 in flight is one loop thread.

- A request whose caller gave up (its reply completed: a deadline, a cancel) is cancelled
  on the loop and frees its slot.
- If the loop's actor crashes or is stopped, its tasks are cancelled unanswered and its
  slots withdrawn: the dispatcher retries each unanswered request once on another worker
  (an LM completion is safe to repeat), then fails it clearly (``LMWorkerCrashed``); the
  supervisor restarts the actor with a new loop.
- A custom LM (a ``BaseLM``, an LM subclass overriding ``complete``/``acomplete``, an
  LM-like object) runs its own code: ``aforward``/``acomplete`` on the loop, a blocking
  ``forward``/``complete`` in a bounded thread pool, holding its slot
  (``runtime/_lm_user_calls.py``).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from functools import partial
from typing import Any

import structlog

from dspy_actors.lm._aio_transport import close_loop_sessions
from dspy_actors.lm._lm import LM, PreparedCall
from dspy_actors.lm._retry_listener import retry_listener
from dspy_actors.lm._types import LMResponse
from dspy_actors.lm.errors import LMError
from dspy_actors.runtime._context import restored
from dspy_actors.runtime._futures import reject
from dspy_actors.runtime._lm_host import SlotHostActor
from dspy_actors.runtime._lm_pool import Dispatcher, LMAttempt, LMPublisher, Slot, Work, _plain_lm
from dspy_actors.runtime._lm_user_calls import UserCalls
from dspy_actors.runtime._loop_tasks import start_request_task
from dspy_actors.runtime._streaming_hooks import StreamEnded, run_streamed

__all__ = ["EventLoopThread", "LMLoop"]

_START_SECONDS = 10.0
_STOP_SECONDS = 5.0

Publisher = LMPublisher  # where requests are counted and their lm.* events published

_log = structlog.get_logger("dspy_actors.runtime.lm")


class EventLoopThread:
    """An asyncio loop in a thread of its own, running the LM requests of its slots."""

    def __init__(
        self, name: str, dispatcher: Dispatcher, slots: int, publisher: Publisher | None = None
    ) -> None:
        self.name = name
        self._dispatcher = dispatcher
        self._publisher = publisher
        self.slots = [Slot(self, i, "loop") for i in range(slots)]
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=f"{name}-loop", daemon=True)
        self._running = threading.Event()
        self._closing = False
        self._tasks: set[asyncio.Task[None]] = set()
        # Requests handed over by senders, not yet begun on the loop: a sender appends and
        # wakes the loop only if no wake-up is pending, so under load one wake-up (one
        # write to the loop's self-pipe, one thread switch) carries many requests.
        self._handed: deque[tuple[Slot, LM, LMAttempt, PreparedCall]] = deque()
        self._wake_pending = False
        # Seconds the loop has run behind schedule so far (see _measure_lag).
        self.lag = 0.0
        self._lag_probe: asyncio.Task[None] | None = None
        self._probe_due = float("inf")  # when the probe's current sleep should end
        # Custom LMs' own code (runtime/_lm_user_calls.py): aforward here, forward in threads.
        self._user_calls = UserCalls(
            name, self._loop, dispatcher, slots, self._tasks, lambda: self._closing
        )

    def start(self) -> None:
        self._thread.start()
        if not self._running.wait(_START_SECONDS):
            raise RuntimeError(f"the LM event loop {self.name} did not start")

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.call_soon(self._running.set)
        self._loop.call_soon(self._start_lag_probe)
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()

    def _start_lag_probe(self) -> None:
        self._lag_probe = self._loop.create_task(self._measure_lag())

    async def _measure_lag(self) -> None:
        """Add up how late the loop runs what is ready: with thousands of requests on one
        loop (or a CPU-starved process) an answer can sit unread for seconds. That time is
        this process's queueing, not the provider's slowness: it is taken off the duration
        the circuit breaker judges."""
        interval = 0.05
        while True:
            self._probe_due = time.monotonic() + interval
            await asyncio.sleep(interval)
            late = time.monotonic() - self._probe_due
            self._probe_due = float("inf")
            if late > 0.0:
                self.lag += late

    def _lag_now(self) -> float:
        """The lag so far, with the lateness of the probe's sleep still running."""
        return self.lag + max(0.0, time.monotonic() - self._probe_due)

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    # Sending (any thread). ----------------------------------------------------------------

    def send(self, slot: Slot, work: Work) -> None:
        """Hand ``work`` to the loop, or answer it here (a cache hit, a deadline already
        past, an LM-like object) and free the slot."""
        try:
            self._send(slot, work)
        except Exception as error:  # a bug below us: the caller hears of it, the slot frees
            reject(work.pending.request.reply, error)
            self._dispatcher.finished(slot, "ignore", 0.0)

    def _send(self, slot: Slot, work: Work) -> None:
        request, lm = work.pending.request, work.lm
        attempt = LMAttempt.begin(request, lm, work.key, self._publisher)
        if attempt is None:
            self._dispatcher.finished(slot, "ignore", 0.0)
            return
        if not _plain_lm(lm):  # the user's own code (forward, complete): as written
            self._user_calls.send(slot, attempt, lm)
            return
        try:
            with restored(request.ctx):
                prepared = lm.prepare(request.messages, **attempt.kwargs)
        except LMError as error:
            self._finished(slot, attempt, attempt.failed(error))
            return
        if isinstance(prepared, LMResponse):  # a cache hit (a fallback LM's cache)
            self._finished(slot, attempt, attempt.succeeded(prepared))
            return
        if threading.get_ident() == self._thread.ident:
            # On the loop itself: a slot freed by an answer took a queued request. Begun
            # now, with no wake-up through the loop's self-pipe.
            self._begin(slot, lm, attempt, prepared)
            return
        self._handed.append((slot, lm, attempt, prepared))
        if self._wake_pending:
            return  # the loop begins it with the others handed over since its last turn
        self._wake_pending = True
        try:
            self._loop.call_soon_threadsafe(self._begin_handed)
        except RuntimeError:
            # The loop is closed: its actor is ending, and withdraws this slot with its
            # request (retried elsewhere) when it does.
            pass

    def _finished(
        self, slot: Slot, attempt: LMAttempt, outcome: str, provider_time: float | None = None
    ) -> None:
        """Free the slot; the breaker judges ``provider_time`` (the call's time on the loop
        less the loop's lag meanwhile) when given, else the time since the hand-over."""
        duration = time.monotonic() - attempt.started if provider_time is None else provider_time
        self._dispatcher.finished(slot, outcome, max(0.0, duration))

    # On the loop. -------------------------------------------------------------------------

    def _begin_handed(self) -> None:
        # The flag is cleared before the deque is read: a sender that appends after this
        # point sees it cleared and wakes the loop again.
        self._wake_pending = False
        handed = self._handed
        if self._closing:
            # Handed over after _shutdown cancelled the tasks: a task begun now would never
            # run. Like those _shutdown clears, they go with their slots, retried elsewhere.
            handed.clear()
            return
        while handed:
            self._begin(*handed.popleft())

    def _begin(self, slot: Slot, lm: LM, attempt: LMAttempt, prepared: PreparedCall) -> None:
        start_request_task(
            self._loop, self._tasks, self._call(slot, lm, attempt, prepared), attempt.request.reply
        )

    async def _call(self, slot: Slot, lm: LM, attempt: LMAttempt, prepared: PreparedCall) -> None:
        request = attempt.request
        if attempt.publish is not None:  # (in this task's own context: no reset needed)
            retry_listener.set(attempt.retried)
        began, lag = time.monotonic(), self._lag_now()
        tap = request.ctx.streaming  # a streamed call: its text goes out as it arrives
        try:
            if tap is None:
                completion = await lm.arun(prepared)
            else:
                completion = await run_streamed(lm, prepared, tap, request.ctx.trace_id)
        except StreamEnded as ended:  # not the provider's doing: the breaker counts nothing
            reject(request.reply, ended.error)
            self._finished(slot, attempt, "ignore")
            return
        except asyncio.CancelledError:
            if self._closing:
                raise  # unanswered: withdrawn with the slot, retried elsewhere
            self._finished(slot, attempt, "ignore")  # its caller gave up
            return
        except LMError as error:  # (counted in lm.stats by arun)
            spent = time.monotonic() - began - (self._lag_now() - lag)
            # The breaker counts it before the caller hears of it (and calls again).
            attempt.failed(error, partial(self._finished, slot, attempt, provider_time=spent))
            return
        except Exception as error:  # a bug below us: the caller's answer, logged here
            _log.exception("lm_call_failed", lm=repr(lm))
            reject(request.reply, error)
            self._finished(slot, attempt, "ignore")
            return
        try:
            with restored(request.ctx):
                response = lm.settle(prepared, completion)
        except Exception as error:  # a cache that cannot store: still the call's answer
            reject(request.reply, error)
            self._finished(slot, attempt, "ignore")
            return
        spent = time.monotonic() - began - (self._lag_now() - lag)
        attempt.succeeded(response, partial(self._finished, slot, attempt, provider_time=spent))

    # Stopping (the owner's thread). --------------------------------------------------------

    def stop(self, timeout: float = _STOP_SECONDS) -> None:
        """Cancel every request in flight (unanswered), close the loop's connections, stop
        the loop and join its thread."""
        self._closing = True
        self._user_calls.stop(timeout)
        if self._thread.is_alive():
            try:
                done = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
                done.result(timeout)
            except Exception:  # a loop that would not stop in time: stopped below anyway
                _log.warning("lm_loop_stop_slow", loop=self.name)
            try:
                self._loop.call_soon_threadsafe(self._loop.stop)
            except RuntimeError:
                pass  # closed already
            self._thread.join(timeout)

    async def _shutdown(self) -> None:
        if self._lag_probe is not None:
            self._lag_probe.cancel()
        self._handed.clear()  # never begun: withdrawn with their slots, retried elsewhere
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await close_loop_sessions()
        # Host names are resolved in the loop's default executor: join its threads too.
        await self._loop.shutdown_default_executor()

    def abandon_requests(self, reason: str) -> None:
        """Withdraw this loop's slots from the pool: the dispatcher retries each request
        they held, unanswered, once on another worker."""
        self._dispatcher.workers_died(self.slots, reason)


class LMLoop(SlotHostActor[EventLoopThread]):
    """Owns one :class:`EventLoopThread` (the shared shape: ``_lm_host``); on any exit its
    requests are cancelled and retried elsewhere."""

    what = "the LM event loop"

    def _open(self) -> EventLoopThread:
        loop = EventLoopThread(self._name, self._dispatcher, self._slots, self._publisher)
        loop.start()
        return loop

    def _details(self, host: EventLoopThread) -> dict[str, Any]:
        return {"in_flight": host.in_flight}

    @property
    def loop(self) -> EventLoopThread | None:
        return self.host
