"""Driving a predictor's steps (``lm.steps``) from asyncio: ``Predict.aforward``.

Each LM call a step asks for is awaited: through the LM's own ``acomplete`` where it has
one (an asyncio HTTP client: no thread held while the request is in flight), otherwise
by running its blocking ``complete`` in asyncio's default thread pool, so the event loop
itself never blocks either way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Generator
from typing import TYPE_CHECKING, Any, TypeVar

from dspy_actors.lm._steps import LMCall

if TYPE_CHECKING:
    from dspy_actors.lm._types import LMResponse

T = TypeVar("T")


async def complete_async(call: LMCall) -> Any:
    """One LM call from asyncio (see the module docstring)."""
    acomplete = getattr(call.lm, "acomplete", None)
    if acomplete is not None:
        return await acomplete(call.messages, **call.kwargs)
    return await asyncio.to_thread(call.lm.complete, call.messages, **call.kwargs)


async def arun_steps(steps: Generator[LMCall, LMResponse, T]) -> T:
    """Drive ``steps`` on the running event loop, awaiting each LM call it asks for."""
    try:
        call = next(steps)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    while True:
        try:
            response = await complete_async(call)
        except Exception as error:
            try:
                call = steps.throw(error)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
            continue
        try:
            call = steps.send(response)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
