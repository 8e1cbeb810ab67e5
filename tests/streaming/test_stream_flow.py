"""Backpressure, cancellation and faults of streamed calls (SimLM over real HTTP)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import dspy_actors as dsa
import supervisors
from dspy_actors.lm.errors import LMError
from dspy_actors.runtime._lm_pool import LMWorkerCrashed, PoolStats
from dspy_actors.runtime.app import App
from dspy_actors.streaming import StreamingInterrupted, StreamResponse
from dspy_actors.testing._faults import Fault
from dspy_actors.testing._polling import wait_until
from dspy_actors.testing.sim_lm import SimLM
from tests.streaming.conftest import StartApp
from tests.streaming.test_handle_stream import chat_answer

# Word by word from SimLM: about 3,000 deltas, far more than any buffer here.
HUGE = " ".join(f"w{i}" for i in range(3000))


def busy(app: App) -> int:
    router = app.registry.lookup(app.router_name)
    return int(supervisors.ask(router, PoolStats(), timeout=5.0)["busy"])


def first_field_piece(stream: Any) -> StreamResponse:
    for piece in stream:
        if isinstance(piece, StreamResponse):
            return piece
    raise AssertionError("no piece streamed")


def test_a_reader_that_stops_holds_the_stream_at_its_buffer(
    sim: SimLM, start_app: StartApp
) -> None:
    sim.respond_with(lambda req: chat_answer(answer=HUGE))
    app = start_app()
    qa = app.serve("qa", dsa.Predict("question -> answer"))
    with qa.stream_with({"question": "q"}, buffer=8) as stream:
        first_field_piece(stream)
        # The LM request goes on until the buffer is full, then waits for the reader.
        wait_until(lambda: stream.buffered == stream.capacity, timeout=20.0)
        assert busy(app) == 1  # still in flight: paused, not finished
        pieces = list(stream)
    assert pieces[-1].answer == HUGE
    assert len(pieces) > 1000
    # Never more than the buffer plus a module's status pieces waited for the reader.
    assert stream.high_water <= stream.capacity + 2


def test_closing_the_stream_aborts_the_lm_request_and_frees_its_slot(
    sim: SimLM, start_app: StartApp
) -> None:
    sim.respond_with(lambda req: chat_answer(answer=HUGE))
    app = start_app()
    qa = app.serve("qa", dsa.Predict("question -> answer"))
    stream = qa.stream_with({"question": "q"}, buffer=4)
    first_field_piece(stream)
    assert busy(app) == 1
    stream.close()
    wait_until(lambda: busy(app) == 0, timeout=20.0)
    # The slot is free for the next call, which runs to its end.
    assert qa.call(question="again").answer == HUGE


def test_cancelling_an_astream_task_frees_the_slot(sim: SimLM, start_app: StartApp) -> None:
    sim.respond_with(lambda req: chat_answer(answer=HUGE))
    app = start_app()
    qa = app.serve("qa", dsa.Predict("question -> answer"))

    async def reader(started: asyncio.Event) -> None:
        async for piece in qa.astream_with({"question": "q"}, buffer=4):
            if isinstance(piece, StreamResponse):
                started.set()
                await asyncio.sleep(3600)  # a reader that stops: cancelled below

    async def main() -> None:
        started = asyncio.Event()
        task = asyncio.create_task(reader(started))
        await asyncio.wait_for(started.wait(), 20)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    wait_until(lambda: busy(app) == 0, timeout=20.0)


def test_provider_dropping_mid_stream_ends_it_with_a_clear_error(
    sim: SimLM, start_app: StartApp
) -> None:
    sim.respond_with(lambda req: chat_answer(answer=HUGE))
    app = start_app()
    qa = app.serve("qa", dsa.Predict("question -> answer"))
    sim.inject(Fault.truncated(after_chunks=40))
    pieces: list[Any] = []
    with pytest.raises(LMError, match="connection failed"):
        pieces.extend(qa.stream(question="q"))
    assert any(isinstance(p, StreamResponse) for p in pieces)
    assert sim.request_count == 1  # not retried: part of it had reached the reader


def test_a_failure_before_the_first_piece_is_retried(sim: SimLM, start_app: StartApp) -> None:
    sim.respond_with(lambda req: chat_answer(answer="fine"))
    app = start_app()
    qa = app.serve("qa", dsa.Predict("question -> answer"))
    sim.inject(Fault.server_error())
    pieces = list(qa.stream(question="q"))
    assert pieces[-1].answer == "fine"
    assert sim.request_count == 2


def _loops_running(workers: supervisors.Supervisor, count: int) -> bool:
    children = workers.which_children()
    return len(children) == count and all(
        info.ref is not None and info.ref.is_alive() for info in children
    )


def test_lm_loop_killed_mid_stream_ends_it_with_a_clear_error(
    sim: SimLM, start_app: StartApp
) -> None:
    sim.respond_with(lambda req: chat_answer(answer=HUGE))
    app = start_app(lm_loops=2)
    qa = app.serve("qa", dsa.Predict("question -> answer"))
    stream = qa.stream_with({"question": "q"}, buffer=4)
    first_field_piece(stream)
    workers = app.root.supervisor("lm").supervisor("workers")
    for info in workers.which_children():  # the loop streaming it, and any the retry finds
        assert info.ref is not None
        supervisors.kill(info.ref)
    # Either the retry found a fresh loop, which refuses to repeat what was streamed, or
    # it found none: a clear error either way, never a hang.
    with pytest.raises((StreamingInterrupted, LMWorkerCrashed)) as failure:
        list(stream)
    assert "mid-stream" in str(failure.value) or "LM event loop was stopped" in str(failure.value)
    wait_until(lambda: busy(app) == 0, timeout=20.0)
    # Both loops restarted (a call sent while they still restart may meet two dead loops).
    wait_until(lambda: _loops_running(workers, 2), timeout=20.0)
    assert qa.call(question="after").answer == HUGE  # the pool came back


def test_module_actor_killed_mid_stream_ends_it_with_a_clear_error(
    sim: SimLM, start_app: StartApp
) -> None:
    sim.respond_with(lambda req: chat_answer(answer=HUGE))
    app = start_app()
    qa = app.serve("qa", dsa.Predict("question -> answer"), idempotent=True)
    stream = qa.stream_with({"question": "q"}, buffer=4)
    first_field_piece(stream)
    ref = app.registry.lookup(f"{app.name}/qa@v1/")
    supervisors.kill(ref)
    with pytest.raises(StreamingInterrupted, match="not retried mid-stream"):
        list(stream)
    wait_until(lambda: busy(app) == 0, timeout=20.0)
