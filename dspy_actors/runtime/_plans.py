"""Call plans: a caller's logic written once, driven by a blocking or an asyncio driver.

What a caller does for one call (send the ``Call``, wait for the reply, resend while the
module restarts, go through a pipeline's steps, retry after a crash) is written as a
*plan*: a generator that sends messages itself (sending never blocks) and yields a step
whenever it must wait:

- :class:`AwaitReply`: the reply future of a ``Call``; the driver sends back the result
  or throws in the error (``DeadlineExceeded`` once the deadline passes first);
- :class:`Pause`: a short wait before trying again.

Two drivers run a plan:

- :func:`run_plan` for synchronous callers (``handle.call``, a composite's ``forward``):
  waits with :func:`dspy_actors.waiting.wait_done`, which blocks a user's thread,
  or parks a forward greenlet so its module actor goes on serving;
- :func:`arun_plan` for ``await handle.acall(...)``: awaits the reply futures on the
  caller's event loop, so a call in flight holds no thread at all.

Either way the plan's ``finally`` blocks run when it ends, also when an asyncio caller
is cancelled (the plan is closed): that is how a cancelled call frees its slots.
"""

from __future__ import annotations

import asyncio
from collections.abc import Generator
from concurrent.futures import Future
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import greenlet

from dspy_actors.lm.errors import LMTimeout
from dspy_actors.runtime._context import CallContext
from dspy_actors.runtime._errors import DeadlineExceeded
from dspy_actors.runtime._futures import reject
from dspy_actors.waiting import pause, wait_done

T = TypeVar("T")

# A wait with no deadline still wakes this often (every wait in actor code is bounded).
MAX_WAIT_SLICE_SECONDS = 5.0


# Not frozen: one is made per wait, and a frozen dataclass's __init__ costs three times
# as much (object.__setattr__ per field). Nothing changes one once made.
@dataclass(slots=True, eq=False)
class AwaitReply:
    """Wait for ``reply`` until the call's deadline (or ``timeout``, if earlier).

    ``kind`` and ``path`` name what was called in a ``DeadlineExceeded``
    ("module 'qa.answer'", "program 'qa'")."""

    reply: Future[Any]
    ctx: CallContext
    path: str
    timeout: float | None = None
    kind: str = "module"


@dataclass(frozen=True, slots=True)
class Pause:
    """Wait ``seconds`` before going on (a resend while a module restarts)."""

    seconds: float


PlanStep = AwaitReply | Pause
Plan = Generator[PlanStep, Any, T]


def _remaining(step: AwaitReply) -> float | None:
    remaining = step.ctx.remaining()
    if step.timeout is None:
        return remaining
    return step.timeout if remaining is None else min(remaining, step.timeout)


def _timed_out_beneath(reply: Future[Any]) -> bool:
    """Whether ``reply`` (done) failed because something beneath the call timed out."""
    if reply.cancelled():
        return False
    return isinstance(reply.exception(), LMTimeout | DeadlineExceeded)


def _expired(step: AwaitReply) -> Any:
    """The outcome of a wait whose time ran out: ``DeadlineExceeded``, unless the reply
    came meanwhile (its answer stands)."""
    expired = DeadlineExceeded(step.ctx.trace_id, f"{step.kind} {step.path!r}")
    reply = step.reply
    if not reject(reply, expired) and _timed_out_beneath(reply):
        # What timed out beneath it was this deadline: the call's own error says so.
        raise expired from reply.exception()
    return reply.result(timeout=0)


def _answer(step: AwaitReply) -> Any:
    """The done reply's outcome. A timeout beneath the call that came once the deadline
    had passed was the deadline's (the LM's limit was the time left): ``DeadlineExceeded``
    naming the step, as when this wait's own timeout wakes it first. On a busy machine
    either can wake it first; the caller sees the same error."""
    remaining = step.ctx.remaining()
    if remaining is not None and remaining <= 0 and _timed_out_beneath(step.reply):
        return _expired(step)
    return step.reply.result(timeout=0)


def await_reply_blocking(step: AwaitReply) -> Any:
    """The reply's result, waiting (blocking, or parking a forward greenlet) at most
    until the step's deadline. The module always answers (see ``calls.send_call``)."""
    reply = step.reply
    if reply.done():  # answered in the send (a cache hit)
        return _answer(step)
    while True:
        remaining = _remaining(step)
        if remaining is not None and remaining <= 0:
            return _expired(step)
        wait = MAX_WAIT_SLICE_SECONDS if remaining is None else remaining
        try:
            done = wait_done(reply, min(wait, MAX_WAIT_SLICE_SECONDS))
        except greenlet.GreenletExit:
            # The forward waiting here was dropped (its own caller cancelled, its actor
            # stopped): the sub-call is not wanted either, so its module drops it too.
            reply.cancel()
            raise
        if done:
            return _answer(step)


async def await_reply_async(step: AwaitReply) -> Any:
    """:func:`await_reply_blocking` for asyncio: awaits the reply on the running loop.

    If the awaiting task is cancelled, the reply future is cancelled too, which tells the
    module actor to drop the call (module_actor: a cancelled reply frees its slot)."""
    reply = step.reply
    if reply.done():  # answered in the send (a cache hit, an idle actor's quick answer)
        return _answer(step)
    loop = asyncio.get_running_loop()
    # One loop future, woken by the reply (from the thread that completes it) or by a
    # timer: cheaper than wrap_future + asyncio.wait, which chain two futures both ways
    # and build a set, a waiter and a timeout per wait.
    woken: asyncio.Future[None] = loop.create_future()
    reply.add_done_callback(partial(_wake_from_thread, loop, woken))
    try:
        while not reply.done():
            remaining = _remaining(step)
            if remaining is not None and remaining <= 0:
                return _expired(step)
            wait = MAX_WAIT_SLICE_SECONDS if remaining is None else remaining
            timer = loop.call_later(min(wait, MAX_WAIT_SLICE_SECONDS), _wake, woken)
            try:
                await woken
            finally:
                timer.cancel()
            if not reply.done():  # the timer: wait again, on a fresh future
                woken = loop.create_future()
                reply.add_done_callback(partial(_wake_from_thread, loop, woken))
    except asyncio.CancelledError:
        reply.cancel()
        raise
    return _answer(step)


def _wake(woken: asyncio.Future[None]) -> None:
    if not woken.done():
        woken.set_result(None)


def _wake_from_thread(
    loop: asyncio.AbstractEventLoop, woken: asyncio.Future[None], _reply: Future[Any]
) -> None:
    """The reply is done (in whatever thread completed it): wake its waiter on its loop."""
    try:
        loop.call_soon_threadsafe(_wake, woken)
    except RuntimeError:
        pass  # the loop is closed: nobody awaits the reply any more


def run_plan(plan: Plan[T]) -> T:
    """Drive ``plan`` in this thread (or on this forward greenlet); its result."""
    value: Any = None
    error: BaseException | None = None
    with _closing(plan):
        while True:
            try:
                step = plan.send(value) if error is None else plan.throw(error)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
            value, error = None, None
            try:
                if isinstance(step, AwaitReply):
                    value = await_reply_blocking(step)
                else:
                    pause(step.seconds)
            except Exception as failure:
                error = failure


async def arun_plan(plan: Plan[T]) -> T:
    """Drive ``plan`` on the running event loop; its result. Cancelling the awaiting task
    closes the plan (its ``finally`` blocks run) and cancels the reply it waited on."""
    value: Any = None
    error: BaseException | None = None
    with _closing(plan):
        while True:
            try:
                step = plan.send(value) if error is None else plan.throw(error)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
            value, error = None, None
            try:
                if isinstance(step, AwaitReply):
                    value = await await_reply_async(step)
                else:
                    await asyncio.sleep(step.seconds)
            except Exception as failure:
                error = failure


class _closing:
    """Close the plan however the driver leaves (a cancelled task, a GreenletExit)."""

    __slots__ = ("_plan",)

    def __init__(self, plan: Plan[Any]) -> None:
        self._plan = plan

    def __enter__(self) -> None:
        return None

    def __exit__(self, *_exc: object) -> None:
        self._plan.close()
