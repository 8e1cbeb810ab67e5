"""``asyncify(program)``: an async function running a (sync) program in a worker thread.

As DSPy's: the settings overrides in force where the coroutine is awaited (``context(...)``)
carry into the thread. The threads are asyncio's default executor's (bounded); for a
served program, ``handle.acall`` awaits the actors without a thread at all.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["asyncify"]


def asyncify(program: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
    """``await asyncify(program)(**inputs)`` runs ``program(**inputs)`` off the event loop."""
    if not callable(program):
        raise TypeError(f"asyncify() needs a callable program, got {type(program).__name__}")

    @functools.wraps(program)
    async def run(*args: Any, **kwargs: Any) -> Any:
        # to_thread runs the call in a copy of this task's context: its settings overrides,
        # active usage meters and running call come along.
        return await asyncio.to_thread(program, *args, **kwargs)

    return run
