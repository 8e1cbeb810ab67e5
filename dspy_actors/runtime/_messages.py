"""The messages actors exchange. Data only: frozen dataclasses (they sit on the hot path).

Replies travel as ``concurrent.futures.Future`` objects carried inside the message: the
handler completes it whenever the work is done (possibly while handling a later message:
a deferred reply, as ``gen_server``'s ``noreply``), and whoever waits can add callbacks,
wait with a timeout, or await it from asyncio.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dspy_actors.runtime._context import CallContext

if TYPE_CHECKING:
    from dspy_actors.lm._lm import LM, CacheMiss
    from dspy_actors.lm._types import LMResponse
    from dspy_actors.primitives.prediction import Prediction


@dataclass(frozen=True, slots=True, eq=False)
class Call:
    """Run a module on ``inputs``; complete ``reply`` with its Prediction or an error."""

    inputs: Mapping[str, Any]
    ctx: CallContext
    reply: Future[Prediction]


@dataclass(frozen=True, slots=True, eq=False)
class LMRequest:
    """One LM completion for ``lm``; the LM pool completes ``reply`` with the response."""

    lm: LM
    messages: list[dict[str, Any]]
    kwargs: Mapping[str, Any]
    ctx: CallContext
    reply: Future[LMResponse]
    # The sender's cache lookup missed: the worker neither repeats it nor recomputes the key.
    known_miss: CacheMiss | None = None
