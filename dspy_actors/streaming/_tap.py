"""The producing side of one stream, as it travels with the call.

A :class:`StreamTap` rides in the call's context (``CallContext.streaming``) through every
hop: module actors announce module starts and ends on it, and for each LM call a
predictor makes, a :class:`PredictorTap` (the predictor's name and output fields, and a
:class:`~dspy_actors.streaming._fields.FieldSplitter`) turns the LM's text deltas into
``StreamResponse`` pieces. Which pieces are wanted (the listeners) and what the stream has
seen of them is kept here, per stream, never on the listener objects: concurrent streams
share nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from typing import Any

from dspy_actors.streaming._channel import StreamingChannel
from dspy_actors.streaming._fields import FieldPiece, FieldSplitter
from dspy_actors.streaming._listener import StreamListener
from dspy_actors.streaming.messages import (
    StatusMessage,
    StatusMessageProvider,
    StreamingInterrupted,
    StreamResponse,
)

__all__ = ["PredictorTap", "StreamTap"]


class StreamTap:
    def __init__(
        self,
        channel: StreamingChannel,
        status: StatusMessageProvider | None,
        listeners: Sequence[StreamListener] = (),
    ) -> None:
        self.channel = channel
        self.status = status
        self.listeners = tuple(listeners)
        self._lock = threading.Lock()
        self._spent: set[int] = set()  # listeners (by index) whose field has ended once

    @property
    def root(self) -> StreamTap:
        return self

    def for_predictor(self, predict_name: str, fields: Iterable[str] | None) -> PredictorTap:
        return PredictorTap(self, predict_name, None if fields is None else list(fields))

    def wanted(self, predict_name: str, field: str, is_last: bool) -> bool:
        """Whether this piece goes to the consumer (and, at a field's end, spend the
        listeners it used up)."""
        if not self.listeners:
            return True
        with self._lock:
            for index, listener in enumerate(self.listeners):
                if index in self._spent or not listener.matches(predict_name, field):
                    continue
                if is_last and not listener.allow_reuse:
                    self._spent.add(index)
                return True
        return False

    def say(self, hook: str, *args: Any) -> None:
        """A status message from the provider's ``hook``, if it words one."""
        if self.status is None:
            return
        try:
            text = getattr(self.status, hook)(*args)
        except Exception:  # a provider that fails must not break the call it reports
            return
        if text is not None:
            self.channel.put_now(StatusMessage(str(text)))


class PredictorTap:
    """One LM call of one predictor (its retries on other workers included)."""

    def __init__(self, root: StreamTap, predict_name: str, fields: list[str] | None) -> None:
        self.root = root
        self.predict_name = predict_name
        self._splitter = FieldSplitter(fields)
        self.fed = 0  # text deltas taken from the LM

    @property
    def channel(self) -> StreamingChannel:
        return self.root.channel

    def begin(self) -> None:
        """An attempt of this LM call starts: after a failed one streamed part of the
        answer, another would repeat it, so it is not made."""
        if self.fed:
            raise StreamingInterrupted(
                f"the LM call of {self.predict_name!r} failed after {self.fed} pieces of "
                "its answer had been streamed; it is not retried mid-stream"
            )

    def _pieces(self, pieces: list[FieldPiece]) -> list[StreamResponse]:
        root, name = self.root, self.predict_name
        return [
            StreamResponse(name, field, text, last)
            for field, text, last in _merged(pieces)
            if root.wanted(name, field, last)
        ]

    async def afeed(self, index: int, text: str) -> None:
        """A delta of the LM's answer, on its event loop: awaits room in the buffer."""
        if index != 0 or not text:
            return  # (n > 1: only the first answer is streamed)
        self.fed += 1
        for piece in self._pieces(self._splitter.feed(text)):
            await self.channel.aput(piece)

    def feed(self, index: int, text: str, deadline: float | None = None) -> None:
        """:meth:`afeed` for a producer thread: blocks while the buffer is full."""
        if index != 0 or not text:
            return
        self.fed += 1
        for piece in self._pieces(self._splitter.feed(text)):
            self.channel.put(piece, deadline)

    def finish(self, response: Any) -> None:
        """The LM call's answer arrived: its fields' last pieces (all of it, as one piece
        per field, if nothing was streamed: a cache hit, a worker that cannot stream)."""
        pieces: list[FieldPiece] = []
        if not self.fed:
            outputs = getattr(response, "outputs", None) or [""]
            self.fed = 1
            pieces += self._splitter.feed(str(outputs[0]))
        pieces += self._splitter.close()
        for piece in self._pieces(pieces):
            self.channel.put_now(piece)


def _merged(pieces: list[FieldPiece]) -> list[FieldPiece]:
    """A field's text and its end, found together, as one last piece (a cache hit's
    field is then one chunk)."""
    out: list[FieldPiece] = []
    for field, text, last in pieces:
        if last and not text and out and out[-1][0] == field and not out[-1][2]:
            out[-1] = (field, out[-1][1], True)
        else:
            out.append((field, text, last))
    return out
