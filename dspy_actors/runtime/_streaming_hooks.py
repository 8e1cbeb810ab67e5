"""Where the runtime's actors meet a streamed call (see dspy_actors/streaming/_tap.py).

Kept apart from _module_actor.py and _lm_loop.py so that their streaming is a few lines
each: a module actor makes a predictor's tap for each LM call of a streamed call; an LM
event loop streams such a call's HTTP response into it instead of reading it whole.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from dspy_actors.runtime._context import CallContext

if TYPE_CHECKING:
    from dspy_actors.lm._lm import LM, PreparedCall
    from dspy_actors.lm._types import Completion

__all__ = ["StreamEnded", "predictor_tap", "run_streamed"]


class StreamEnded(Exception):
    """A streamed LM call ended for a reason that is not the provider's (the consumer
    went away or stalled until the deadline; an earlier attempt streamed part of the
    answer): the call's answer is ``error``, and the circuit breaker counts nothing."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


def predictor_tap(ctx: CallContext, path: str) -> Any:
    """The tap for one LM call of predictor ``path`` in a streamed call, else None."""
    tap = ctx.streaming
    return None if tap is None else tap.root.for_predictor(path, None)


async def run_streamed(lm: LM, prepared: PreparedCall, tap: Any, trace_id: str) -> Completion:
    """``lm.arun(prepared)``, streamed into ``tap`` as the text arrives; bounded by the
    call's deadline (a consumer that stops reading holds the request at most that long).

    Raises ``StreamingInterrupted`` if an earlier attempt (on a loop that died) had
    streamed part of the answer already: repeating it would repeat text."""
    from dspy_actors.runtime._errors import DeadlineExceeded
    from dspy_actors.streaming._channel import ChannelClosed
    from dspy_actors.streaming.messages import StreamingInterrupted

    try:
        tap.begin()
    except StreamingInterrupted as error:
        raise StreamEnded(error) from None
    remaining = None if prepared.deadline is None else prepared.deadline - time.monotonic()
    try:
        async with asyncio.timeout(None if remaining is None else max(0.0, remaining)):
            return await lm.arun_streaming(prepared, tap.afeed)
    except ChannelClosed:
        raise StreamEnded(StreamingInterrupted("the stream's consumer went away")) from None
    except TimeoutError as exc:  # (the LM's own timeouts come as LMTimeout)
        late = DeadlineExceeded(trace_id, f"streaming the answer of {tap.predict_name!r}")
        raise StreamEnded(late) from exc
