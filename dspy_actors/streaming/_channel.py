"""The bounded buffer between a stream's producers and its one consumer.

Producers are an LM event loop's tasks (``aput``: when the buffer is full the task awaits
room, so it stops reading the HTTP response and the socket's window closes: that is the
backpressure), an in-process program's thread (``put``: blocks while full, never
forever), and module actors (``put_now``: a status message or a cache hit's few pieces,
never waiting, so an actor never blocks on a slow reader; these are bounded by the
program's size, not by the answer's length). The consumer is one thread (``get``) or one
asyncio task (``aget``). Closing the channel (the consumer went away) makes every
producer's next put raise :class:`ChannelClosed`, which aborts the LM request it is
streaming.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from typing import Any

__all__ = ["ChannelClosed", "StreamingChannel"]

DEFAULT_CAPACITY = 64
# A blocking put or get waits in slices this long at most (no wait is forever).
_WAIT_SLICE_SECONDS = 1.0


class ChannelClosed(Exception):
    """The consumer closed the stream: stop producing."""


class StreamingChannel:
    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError(f"a stream's buffer needs room for one piece at least: {capacity}")
        self.capacity = capacity
        self._lock = threading.Lock()
        self._items: deque[Any] = deque()
        self._room = threading.Condition(self._lock)  # producers in threads wait here
        self._ready = threading.Condition(self._lock)  # a consumer thread waits here
        self._room_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._consumer: tuple[asyncio.AbstractEventLoop, asyncio.Future[None]] | None = None
        self._closed = False
        self.delivered = 0  # pieces the consumer has taken
        self.high_water = 0  # the most pieces ever buffered at once

    @property
    def buffered(self) -> int:
        return len(self._items)

    @property
    def closed(self) -> bool:
        return self._closed

    # Producers. ---------------------------------------------------------------------------

    async def aput(self, item: Any) -> None:
        """Add ``item``, awaiting room first (on the producer's event loop)."""
        while True:
            with self._lock:
                if self._closed:
                    raise ChannelClosed
                if len(self._items) < self.capacity:
                    self._append(item)
                    return
                loop = asyncio.get_running_loop()
                room: asyncio.Future[None] = loop.create_future()
                self._room_waiters.append((loop, room))
            await room

    def put(self, item: Any, deadline: float | None = None) -> None:
        """Add ``item``, blocking while the buffer is full (until ``deadline``, a
        ``time.monotonic()`` instant: then ``TimeoutError``)."""
        with self._lock:
            while not self._closed and len(self._items) >= self.capacity:
                wait = _WAIT_SLICE_SECONDS
                if deadline is not None:
                    wait = min(wait, deadline - time.monotonic())
                    if wait <= 0:
                        raise TimeoutError("the stream's consumer read nothing until the deadline")
                self._room.wait(wait)
            if self._closed:
                raise ChannelClosed
            self._append(item)

    def put_now(self, item: Any) -> None:
        """Add ``item`` without waiting (dropped if the consumer has gone)."""
        with self._lock:
            if not self._closed:
                self._append(item)

    def _append(self, item: Any) -> None:  # under the lock
        self._items.append(item)
        self.high_water = max(self.high_water, len(self._items))
        self._wake_consumer()

    def _wake_consumer(self) -> None:  # under the lock
        self._ready.notify()
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            _set_soon(*consumer)

    def wake(self) -> None:
        """Wake the consumer (something it waits for besides pieces has happened)."""
        with self._lock:
            self._wake_consumer()

    # The consumer. ------------------------------------------------------------------------

    def take_all(self) -> list[Any]:
        """Every buffered piece, now (empty if none)."""
        with self._lock:
            items = list(self._items)
            self._items.clear()
            self.delivered += len(items)
            self._room.notify_all()
            waiters, self._room_waiters = self._room_waiters, []
        for loop, room in waiters:
            _set_soon(loop, room)
        return items

    def wait(self, timeout: float) -> None:
        """Block until a piece is buffered or :meth:`wake` is called (or ``timeout``)."""
        with self._lock:
            if not self._items:
                self._ready.wait(timeout)

    async def await_ready(self, timeout: float) -> None:
        """:meth:`wait` for a consumer on an event loop."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._items:
                return
            ready: asyncio.Future[None] = loop.create_future()
            self._consumer = (loop, ready)
        try:
            await asyncio.wait_for(ready, timeout)
        except TimeoutError:
            pass
        finally:
            with self._lock:
                if self._consumer is not None and self._consumer[1] is ready:
                    self._consumer = None

    def close(self) -> None:
        """The consumer is gone: drop what is buffered and stop every producer."""
        with self._lock:
            self._closed = True
            self._items.clear()
            self._room.notify_all()
            waiters, self._room_waiters = self._room_waiters, []
        for loop, room in waiters:
            _set_soon(loop, room)


def _set_soon(loop: asyncio.AbstractEventLoop, future: asyncio.Future[None]) -> None:
    def settle() -> None:
        if not future.done():
            future.set_result(None)

    try:
        loop.call_soon_threadsafe(settle)
    except RuntimeError:
        pass  # that loop has closed: nobody waits on it any more
