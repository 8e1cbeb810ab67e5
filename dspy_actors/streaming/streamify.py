"""``streamify``: DSPy's in-process streaming, on the same pieces as ``handle.stream``.

``dsa.streamify(program, stream_listeners=[StreamListener("answer")])`` returns a function
that runs ``program`` and yields, as DSPy's does, ``StatusMessage``s, ``StreamResponse``s
and last the Prediction. The program runs in a thread of its own (DSPy runs it in a
worker thread too); each predictor's LM call streams its answer (``LM.stream``) into a
bounded :class:`StreamingChannel`, so a reader that stops reading stops the HTTP read, and
closing the stream stops the program at its next piece.

Unlike DSPy's, a listener holds no state of a stream (DSPy issue 8173: two concurrent
streams through one listener mixed their text); the stream keeps it, so one streamified
program serves any number of concurrent callers. With no listeners every output field of
every predictor streams (DSPy then yields the provider's raw chunks instead).
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from dspy_actors import _settings as settings
from dspy_actors._callbacks import BaseCallback
from dspy_actors.lm._steps import LMCall, lm_call_hook
from dspy_actors.streaming._channel import DEFAULT_CAPACITY, ChannelClosed, StreamingChannel
from dspy_actors.streaming._listener import StreamListener
from dspy_actors.streaming._tap import PredictorTap, StreamTap
from dspy_actors.streaming.messages import StatusMessageProvider

__all__ = ["streamify"]

# A reader's wait for the next piece wakes this often to check on the program's thread.
_WAIT_SLICE_SECONDS = 1.0
# How long closing a stream waits for its program's thread to notice and end.
_JOIN_SECONDS = 10.0


def _predictor_names(program: Any) -> dict[int, str]:
    named = getattr(program, "named_predictors", None)
    return {id(p): name for name, p in named()} if named is not None else {}


def _resolved(program: Any, listeners: Sequence[StreamListener]) -> list[StreamListener]:
    """Each listener with its predictor's name, found as DSPy finds it (a copy: the
    caller's listener objects are left as they are)."""
    named = list(program.named_predictors()) if hasattr(program, "named_predictors") else []
    out: list[StreamListener] = []
    for listener in listeners:
        field = listener.signature_field_name
        if listener.predict is not None:
            names = [n for n, p in named if p is listener.predict]
            if not names:
                raise ValueError(f"{listener!r}: its predictor is not part of this program")
            name = names[0]
        elif listener.predict_name is not None:
            name = listener.predict_name
        else:
            having = [n for n, p in named if field in p.signature.output_fields]
            if not having:
                raise ValueError(
                    f"{listener!r}: no predictor of this program has an output field "
                    f"{field!r} (its predictors: {[n for n, _ in named]})"
                )
            if len(having) > 1:
                raise ValueError(
                    f"{listener!r}: the output field {field!r} is in several predictors "
                    f"({having}); say which with predict= or predict_name="
                )
            name = having[0]
        out.append(StreamListener(field, predict_name=name, allow_reuse=listener.allow_reuse))
    return out


class _Watcher(BaseCallback):
    """Keeps, per program thread, which module is running (the innermost is the
    predictor whose LM call streams), and words the status messages."""

    def __init__(self, tap: StreamTap) -> None:
        self.tap = tap
        self.running: list[Any] = []

    def on_module_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        self.running.append(instance)
        self.tap.say("module_start_status_message", instance, inputs)

    def on_module_end(
        self, call_id: str, outputs: Any | None, exception: BaseException | None = None
    ) -> None:
        if self.running:
            self.running.pop()
        if exception is None:
            self.tap.say("module_end_status_message", outputs)

    def on_lm_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        self.tap.say("lm_start_status_message", instance, inputs)

    def on_lm_end(
        self, call_id: str, outputs: Any | None, exception: BaseException | None = None
    ) -> None:
        if exception is None:
            self.tap.say("lm_end_status_message", outputs)


def _streamed_lm_call(tap: StreamTap, watcher: _Watcher, names: dict[int, str]) -> Any:
    def make(call: LMCall) -> Any:
        predictor = watcher.running[-1] if watcher.running else None
        name = names.get(id(predictor), type(predictor).__name__)
        fields = getattr(getattr(predictor, "signature", None), "output_fields", None)
        piece_tap: PredictorTap = tap.for_predictor(name, None if fields is None else list(fields))
        stream = getattr(call.lm, "stream", None)
        kwargs = {k: v for k, v in call.kwargs.items() if k not in ("known_miss", "deadline")}
        if stream is None:  # an LM-like object that cannot stream: its answer in one piece
            response = call.lm.complete(call.messages, **call.kwargs)
        else:
            events = stream(call.messages, **kwargs)
            response = None
            try:
                for event in events:
                    if event.response is not None:
                        response = event.response
                    else:
                        piece_tap.feed(event.index, event.text)
            finally:
                events.close()  # a stream closed mid-answer: the HTTP response is dropped
        piece_tap.finish(response)
        return response

    return make


def _run(program: Any, tap: StreamTap, args: Any, kwargs: Any, outcome: list[Any]) -> None:
    watcher = _Watcher(tap)
    hook = _streamed_lm_call(tap, watcher, _predictor_names(program))
    callbacks = [*(settings.get("callbacks") or []), watcher]
    token = lm_call_hook.set(hook)
    try:
        with settings.context(callbacks=callbacks):
            outcome.append(("ok", program(*args, **kwargs)))
    except ChannelClosed:
        outcome.append(("closed", None))
    except BaseException as error:
        outcome.append(("error", error))
    finally:
        lm_call_hook.reset(token)
        tap.channel.wake()


def _start(
    program: Any, tap: StreamTap, args: Any, kwargs: Any
) -> tuple[threading.Thread, list[Any]]:
    outcome: list[Any] = []
    context = contextvars.copy_context()  # the caller's settings overrides go along
    thread = threading.Thread(
        target=context.run,
        args=(_run, program, tap, args, kwargs, outcome),
        name="streamify",
        daemon=True,
    )
    thread.start()
    return thread, outcome


def _final(outcome: list[Any], include_final: bool) -> list[Any]:
    kind, value = outcome[0]
    if kind == "error":
        raise value
    return [value] if include_final and kind == "ok" else []


def streamify(
    program: Any,
    status_message_provider: StatusMessageProvider | None = None,
    stream_listeners: Sequence[StreamListener] | None = None,
    include_final_prediction_in_output_stream: bool = True,
    is_async_program: bool = False,
    async_streaming: bool = True,
    *,
    buffer: int = DEFAULT_CAPACITY,
) -> Callable[..., Any]:
    """DSPy's ``streamify``: a function that runs ``program`` and returns an async
    iterator (a sync one with ``async_streaming=False``) of ``StatusMessage``s,
    ``StreamResponse``s and last the Prediction (unless
    ``include_final_prediction_in_output_stream=False``). ``buffer``: pieces held for a
    slow reader before the LM's HTTP read pauses. (``is_async_program`` is accepted for
    DSPy's signature: the program runs in a thread of its own either way.)"""
    del is_async_program
    listeners = _resolved(program, stream_listeners or [])
    status = status_message_provider or StatusMessageProvider()

    def sync_stream(*args: Any, **kwargs: Any) -> Iterator[Any]:
        channel = StreamingChannel(buffer)
        thread, outcome = _start(program, StreamTap(channel, status, listeners), args, kwargs)
        try:
            while True:
                yield from channel.take_all()
                if not thread.is_alive() and outcome:
                    yield from channel.take_all()
                    yield from _final(outcome, include_final_prediction_in_output_stream)
                    return
                channel.wait(_WAIT_SLICE_SECONDS)
        finally:
            channel.close()
            thread.join(_JOIN_SECONDS)

    async def async_stream(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        channel = StreamingChannel(buffer)
        thread, outcome = _start(program, StreamTap(channel, status, listeners), args, kwargs)
        try:
            while True:
                for piece in channel.take_all():
                    yield piece
                if not thread.is_alive() and outcome:
                    for piece in channel.take_all():
                        yield piece
                    for piece in _final(outcome, include_final_prediction_in_output_stream):
                        yield piece
                    return
                await channel.await_ready(_WAIT_SLICE_SECONDS)
        finally:
            channel.close()
            for _ in range(int(_JOIN_SECONDS / 0.01)):  # never blocks the event loop
                if not thread.is_alive():
                    break
                await asyncio.sleep(0.01)

    return async_stream if async_streaming else sync_stream
