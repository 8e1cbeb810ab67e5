"""LM work as steps: a generator that *asks* for each LM call instead of making it.

A predictor's logic (format the prompt, call the LM, parse; maybe call again with another
adapter) is written once, as a generator that yields an :class:`LMCall` and receives the
:class:`LMResponse` (or has the call's exception thrown into it). Two drivers run it:

- :func:`run_steps`, in-process: makes each call with ``lm.complete`` and blocks (what
  ``Predict.forward`` does);
- the actor runtime: sends each call to the LM pool as a message and resumes the generator
  when the reply arrives as a later message, so a module actor never blocks on the LM.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from dspy_actors.lm._lm import LM
    from dspy_actors.lm._types import LMResponse

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class LMCall:
    """One LM completion a step asks for: ``lm.complete(messages, **kwargs)``."""

    lm: LM
    messages: list[dict[str, Any]]
    kwargs: Mapping[str, Any]


Steps = Generator[LMCall, "LMResponse", T]

# In-process streaming (``dspy_actors.streaming.streamify``) sets this in the thread that
# runs the program: each LM call is then made by it, which streams the answer's text out
# as it arrives, instead of by ``lm.complete``.
lm_call_hook: contextvars.ContextVar[Callable[[LMCall], LMResponse] | None] = (
    contextvars.ContextVar("dspy_actors_lm_call_hook", default=None)
)


def run_steps(steps: Generator[LMCall, LMResponse, T]) -> T:
    """Drive ``steps`` in this thread, making each LM call as it is asked for."""
    try:
        call = next(steps)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    while True:
        hook = lm_call_hook.get()
        try:
            if hook is None:
                response = call.lm.complete(call.messages, **call.kwargs)
            else:
                response = hook(call)
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
