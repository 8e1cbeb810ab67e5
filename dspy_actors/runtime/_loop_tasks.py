"""A request's task on an LM event loop, tied to its caller's reply.

Both kinds of request an LM loop runs (a plain LM's phases, ``runtime/_lm_loop.py``; a
custom LM's own coroutine, ``runtime/_lm_user_calls.py``) start the same way: a task the
loop keeps (so stopping the loop cancels it), cancelled as soon as the caller's side
completes the reply (a deadline, a cancel), so nobody waits on the provider for an
answer no one will read.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any

__all__ = ["start_request_task"]


def start_request_task(
    loop: asyncio.AbstractEventLoop,
    tasks: set[asyncio.Task[None]],
    coro: Coroutine[Any, Any, None],
    reply: Future[Any],
) -> None:
    """Run ``coro`` as a task of ``loop`` kept in ``tasks`` until it ends; cancel it when
    ``reply`` is completed from another thread. Call on the loop's thread."""
    task = loop.create_task(coro)
    tasks.add(task)
    task.add_done_callback(tasks.discard)
    loop_thread = threading.get_ident()

    def caller_gave_up(_reply: Future[Any]) -> None:
        # Completed on the loop's thread: the task answered it, nothing to stop. From
        # elsewhere: the caller's side gave up, so stop waiting for the provider.
        if threading.get_ident() != loop_thread and not task.done():
            try:
                loop.call_soon_threadsafe(_cancel_if_pending, task)
            except RuntimeError:
                pass  # the loop closed meanwhile

    reply.add_done_callback(caller_gave_up)


def _cancel_if_pending(task: asyncio.Task[None]) -> None:
    if not task.done():
        task.cancel()
