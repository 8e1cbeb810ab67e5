"""``handle.stream`` / ``handle.astream``: a call whose answer streams to its caller.

A streamed call is an ordinary call (the same plan as ``call``: retries, pipelines, the
in-flight gate, deadlines) whose context carries a :class:`StreamTap` with a bounded
:class:`StreamingChannel`. The module actors and LM event loops it reaches put pieces into
the channel; the caller drives the plan and reads the channel in the same loop, so a
stream in flight holds no thread of its own: ``stream`` reads in the caller's thread,
``astream`` on the caller's event loop.

- The stream yields ``StatusMessage``/``StreamResponse`` pieces as they come, then last
  the Prediction (or raises the call's error, after the pieces that came before it).
- Closing the iterator (``break``, ``aclose``, a cancelled task) closes the channel and
  cancels the call: the LM request streaming into it stops at its next piece and its slot
  is freed; a module call still waiting is dropped.
- A crash is retried (``idempotent``) only while no piece has reached the consumer; after
  that it ends the stream with :class:`StreamingInterrupted`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterator
from typing import Any

from dspy_actors.runtime._errors import ModuleCrashed
from dspy_actors.runtime._plans import (
    MAX_WAIT_SLICE_SECONDS,
    AwaitReply,
    Plan,
    _expired,
    _remaining,
    arun_plan,
)
from dspy_actors.streaming._channel import StreamingChannel
from dspy_actors.streaming.messages import StreamingInterrupted

__all__ = ["AsyncStreaming", "Streaming", "astream_plan", "stream_plan"]


class Streaming(Iterator[Any]):
    """What ``handle.stream`` returns: an iterator over the pieces and, last, the
    Prediction. ``close()`` (or leaving a ``with`` block, or ``break`` in a ``for`` that
    drops it) cancels the call. ``buffered`` and ``high_water`` say how many pieces wait
    for the reader now and at most so far (never much beyond ``capacity``)."""

    def __init__(self, plan: Plan[Any], channel: StreamingChannel) -> None:
        self._channel = channel
        self._pieces = stream_plan(plan, channel)

    def __iter__(self) -> Streaming:
        return self

    def __next__(self) -> Any:
        return next(self._pieces)

    def close(self) -> None:
        self._pieces.close()

    def __enter__(self) -> Streaming:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @property
    def capacity(self) -> int:
        return self._channel.capacity

    @property
    def buffered(self) -> int:
        return self._channel.buffered

    @property
    def high_water(self) -> int:
        return self._channel.high_water


class AsyncStreaming(AsyncIterator[Any]):
    """What ``handle.astream`` returns: :class:`Streaming` for ``async for``; ``aclose()``
    (or cancelling the reading task) cancels the call."""

    def __init__(self, plan: Plan[Any], channel: StreamingChannel) -> None:
        self._channel = channel
        self._pieces = astream_plan(plan, channel)

    def __aiter__(self) -> AsyncStreaming:
        return self

    async def __anext__(self) -> Any:
        return await self._pieces.__anext__()

    async def aclose(self) -> None:
        await self._pieces.aclose()

    async def __aenter__(self) -> AsyncStreaming:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    @property
    def capacity(self) -> int:
        return self._channel.capacity

    @property
    def buffered(self) -> int:
        return self._channel.buffered

    @property
    def high_water(self) -> int:
        return self._channel.high_water


def _guarded(plan: Plan[Any], channel: StreamingChannel) -> Plan[Any]:
    """``plan``, except that a crash after a piece reached the consumer is not retried."""
    value: Any = None
    error: BaseException | None = None
    try:
        while True:
            try:
                step = plan.send(value) if error is None else plan.throw(error)
            except StopIteration as done:
                return done.value
            value, error = None, None
            try:
                value = yield step
            except Exception as failure:
                if isinstance(failure, ModuleCrashed) and channel.delivered:
                    raise StreamingInterrupted(
                        f"{failure} after {channel.delivered} pieces of the answer had been "
                        "streamed; not retried mid-stream"
                    ) from failure
                error = failure
    finally:
        plan.close()


def stream_plan(plan: Plan[Any], channel: StreamingChannel) -> Generator[Any, None, None]:
    """Drive ``plan`` in this thread, yielding the channel's pieces as they come, then
    the plan's result."""
    guarded = _guarded(plan, channel)
    step: Any = None
    try:
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                step = guarded.send(value) if error is None else guarded.throw(error)
            except StopIteration as done:
                yield from channel.take_all()
                step = None
                yield done.value
                return
            value, error = None, None
            try:
                if isinstance(step, AwaitReply):
                    step.reply.add_done_callback(lambda _reply: channel.wake())
                    while True:
                        yield from channel.take_all()
                        if step.reply.done():
                            value = step.reply.result(timeout=0)
                            break
                        remaining = _remaining(step)
                        if remaining is not None and remaining <= 0:
                            value = _expired(step)
                            break
                        channel.wait(
                            min(remaining or MAX_WAIT_SLICE_SECONDS, MAX_WAIT_SLICE_SECONDS)
                        )
                else:
                    until = time.monotonic() + step.seconds
                    while (left := until - time.monotonic()) > 0:
                        yield from channel.take_all()
                        channel.wait(left)
            except Exception as failure:
                error = failure
    finally:
        channel.close()
        if isinstance(step, AwaitReply):
            step.reply.cancel()  # the caller went away mid-call: the module drops it
        guarded.close()


async def astream_plan(plan: Plan[Any], channel: StreamingChannel) -> AsyncGenerator[Any, None]:
    """:func:`stream_plan` on the running event loop (the plan runs as a task on it)."""
    task = asyncio.ensure_future(arun_plan(_guarded(plan, channel)))
    task.add_done_callback(lambda _task: channel.wake())
    try:
        while True:
            for piece in channel.take_all():
                yield piece
            if task.done():
                for piece in channel.take_all():
                    yield piece
                yield task.result()
                return
            await channel.await_ready(MAX_WAIT_SLICE_SECONDS)
    finally:
        channel.close()
        if not task.done():
            task.add_done_callback(_retrieved)
            task.cancel()  # cancels the reply it awaits: the module drops the call


def _retrieved(task: asyncio.Future[Any]) -> None:
    """Mark a cancelled stream's outcome as seen (nobody reads it any more)."""
    if not task.cancelled():
        task.exception()
