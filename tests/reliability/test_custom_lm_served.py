"""A custom LM (``dsa.BaseLM``, or an ``LM`` subclass) served by the runtime: its own code
runs (``aforward`` on the LM event loop, a blocking ``forward`` in the loop's bounded
thread pool) under concurrency, with events, breaker, fallbacks and deadlines."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest

import dspy_actors as dsa
from dspy_actors.lm import LM
from dspy_actors.runtime._lm_user_calls import MAX_THREADS
from dspy_actors.runtime.app import App
from dspy_actors.testing import SimLM
from tests.dspy_actors.runtime.conftest import kill_a_loop_mid_flight
from tests.reliability.custom_lms import ComputingLM, HttpAforwardLM, HttpForwardLM

QA = "question -> answer"


def test_forward_lm_serves_many_callers_in_bounded_threads(
    make_app: Callable[..., App], sim_lm: SimLM
) -> None:
    lm = HttpForwardLM(sim_lm.openai_base)
    app = make_app(lm=lm, lm_max_in_flight=8)
    ends: list[Any] = []
    app.subscribe("lm.end", ends.append)
    qa = app.serve("qa", dsa.Predict(QA))
    results = qa.batch([{"question": f"q{i}"} for i in range(48)], concurrency=24)
    assert all(r.answer for r in results)
    assert sim_lm.stats.served == 48
    assert len(lm.threads) <= min(8, MAX_THREADS)  # the loop's pool, bounded by its slots
    assert all("-forward" in name for name in lm.threads)
    assert app.events.flush(30.0)
    assert len(ends) == 48
    assert {e.model for e in ends} == {"sim-custom"}
    assert all(e.prompt_tokens > 0 for e in ends)


def test_aforward_lm_runs_on_the_lm_event_loop(make_app: Callable[..., App], sim_lm: SimLM) -> None:
    lm = HttpAforwardLM(sim_lm.openai_base)
    app = make_app(lm=lm, lm_max_in_flight=16)
    qa = app.serve("qa", dsa.Predict(QA))
    results = qa.batch([{"question": f"q{i}"} for i in range(32)], concurrency=32)
    assert all(r.answer for r in results)
    [loop_thread] = lm.threads  # every call on the one loop thread, none in a pool
    assert loop_thread.endswith("-loop")


def test_a_crash_in_forward_is_a_clear_error_and_the_breaker_falls_back(
    make_app: Callable[..., App], sim_lm: SimLM
) -> None:
    """Crashing inputs get LMForwardError naming the LM and the crash; others answer; none
    hangs. Once crashes open the primary's breaker, calls go to the fallback."""
    crashing = ComputingLM()
    fallback = HttpForwardLM(sim_lm.openai_base, model="fallback")
    app = make_app(
        lm=crashing,
        fallbacks=[fallback],
        lm_max_in_flight=8,
        breaker={"window_size": 4, "minimum_calls": 4, "wait_in_open": 60.0},
    )
    qa = app.serve("qa", dsa.Predict(QA))
    outcomes = qa.batch(
        [{"question": "crash now" if i % 2 else f"fine {i}"} for i in range(8)],
        concurrency=8,
        return_exceptions=True,
    )
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    assert errors  # (once the breaker opened, the rest went to the fallback)
    for error in errors:
        assert isinstance(error, dsa.LMForwardError)
        assert "ComputingLM.forward raised RuntimeError: cannot answer 'crash now'" in str(error)
    assert all(o.answer for o in outcomes if not isinstance(o, BaseException))
    # The primary's breaker is open now: the next calls are the fallback's.
    assert qa.call(question="crash again").answer
    assert any(r.model == "fallback" for r in sim_lm.requests)
    assert "open" in app.dispatcher.stats()["breakers"].values()


def test_the_deadline_cancels_a_hung_aforward(make_app: Callable[..., App]) -> None:
    cancelled = threading.Event()

    class Hangs(dsa.BaseLM):
        async def aforward(self, prompt: Any = None, messages: Any = None, **kw: Any) -> Any:
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                cancelled.set()
                raise

    app = make_app(lm=Hangs("hangs"), lm_max_in_flight=4)
    qa = app.serve("qa", dsa.Predict(QA))
    with pytest.raises(dsa.DeadlineExceeded):
        qa.call_with({"question": "x"}, timeout=0.5)
    assert cancelled.wait(30.0)  # the task on the loop was cancelled, its slot freed


def test_an_lm_subclass_overriding_complete_is_honoured(
    make_app: Callable[..., App], make_lm: Callable[..., LM], sim_lm: SimLM
) -> None:
    seen: list[str] = []

    class Counting(LM):
        def complete(self, messages: list[dict[str, Any]], **kw: Any) -> Any:
            seen.append(threading.current_thread().name)
            return super().complete(messages, **kw)

    base = make_lm()
    lm = Counting(base.model, api_base=base.api_base, api_key="k", cache=False)
    try:
        app = make_app(lm=lm, lm_max_in_flight=4)
        qa = app.serve("qa", dsa.Predict(QA))
        assert all(r.answer for r in qa.batch([{"question": f"q{i}"} for i in range(6)]))
    finally:
        lm.close()
    assert len(seen) == 6


def test_an_lm_subclass_defining_forward_is_refused_at_start(
    make_app: Callable[..., App], make_lm: Callable[..., LM]
) -> None:
    class Misplaced(LM):
        def forward(self, prompt: Any = None, messages: Any = None, **kw: Any) -> Any:
            raise AssertionError("never called")

    base = make_lm()
    lm = Misplaced(base.model, api_base=base.api_base, api_key="k")
    with pytest.raises(
        TypeError, match=r"Misplaced subclasses dsa.LM and defines forward\(\).*dsa.BaseLM"
    ):
        make_app(lm=lm)
    lm.close()


def test_an_optimization_run_calls_the_custom_lm_through_the_pool(
    make_app: Callable[..., App],
) -> None:
    app = make_app(lm=ComputingLM(), lm_max_in_flight=4)
    starts: list[Any] = []
    app.subscribe("lm.start", starts.append)
    train = [
        dsa.Example(question=q, answer=q.upper()).with_inputs("question")
        for q in ("ab", "cd", "ef", "gh")
    ]
    optimizer = dsa.BootstrapFewShot(
        metric=lambda example, pred, trace=None: example.answer == pred.answer,
        max_bootstrapped_demos=2,
        max_labeled_demos=0,
    )
    program = app.optimize(optimizer, dsa.Predict(QA), trainset=train).result(60)
    assert isinstance(program, dsa.Predict)
    assert len(program.demos) == 2
    assert app.events.flush(30.0)
    assert {e.model for e in starts} == {"computing"}  # the run's calls went through the pool


@pytest.mark.parametrize("workers", [{"lm_loops": 2}, {"lm_processes": 1}])
def test_every_worker_kind_runs_the_custom_forward(
    make_app: Callable[..., App], workers: dict[str, int]
) -> None:
    """Loops run it beside them; worker processes cannot take a custom LM (only a plain
    LM's HTTP goes there), so its calls run in threads of this process."""
    app = make_app(lm=ComputingLM(), **workers)
    qa = app.serve("qa", dsa.Predict(QA))
    assert [p.answer for p in qa.batch([{"question": f"x{i}"} for i in range(5)])] == [
        f"X{i}" for i in range(5)
    ]
    with pytest.raises(dsa.LMForwardError, match="cannot answer 'crash'"):
        qa.call(question="crash")


@pytest.mark.parametrize("kind", [HttpForwardLM, HttpAforwardLM], ids=["forward", "aforward"])
def test_a_loop_killed_mid_flight_loses_no_custom_lm_call(
    make_app: Callable[..., App], kind: type[dsa.BaseLM]
) -> None:
    """Killing one of two LM loops while its custom-LM calls are in flight: a running
    forward answers its caller (the request is not sent twice), an aforward task is
    cancelled and its request retried on the other loop; every call gets its answer."""
    with SimLM(latency=0.5) as sim:
        app = make_app(lm=kind(sim.openai_base), lm_loops=2, lm_max_in_flight=64)
        kill_a_loop_mid_flight(app, sim)
        app.stop()
