"""Calls handled in the caller's thread while the module actor is idle (tell_inline): the
actor's guarantees hold, whichever thread handles a call."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pykka
import pytest

import supervisors
from dspy_actors.lm.cache import Cache
from dspy_actors.modules._predict import Predict
from dspy_actors.runtime._errors import DeadLettered, ModuleCrashed, ModuleUnavailable
from dspy_actors.runtime._lm_pool import PoolStats
from dspy_actors.testing.sim_lm import SimLM
from tests.dspy_actors.runtime.conftest import StartApp, run_in_threads
from tests.dspy_actors.runtime.programs import RecordingLM, TracedPredict

TIMEOUT = 10.0


def _module(app: Any, name: str) -> TracedPredict:
    ref = app.registry.whereis(f"{app.name}/{name}@v1/")
    assert ref is not None
    module: TracedPredict = supervisors.ask(
        ref, pykka.messages.ProxyGetAttr(("module",)), timeout=TIMEOUT
    )
    return module


def test_a_cached_call_to_an_idle_actor_runs_in_the_callers_thread(
    start_app: StartApp, make_lm: Any, sim: SimLM
) -> None:
    cache = Cache(disk_path=None)
    app = start_app(lm=make_lm(cache=True, cache_store=cache))
    qa = app.serve("qa", TracedPredict())
    first = qa.call(question="same")
    second = qa.call(question="same")
    assert second.answer == first.answer
    assert sim.request_count == 1
    module = _module(app, "qa")
    assert module.threads == [threading.get_ident()] * 2
    cache.close()


def test_a_crash_in_the_callers_thread_restarts_the_actor_and_others_are_answered(
    start_app: StartApp, sim: SimLM
) -> None:
    app = start_app(poison_threshold=100)
    qa = app.serve("qa", TracedPredict())
    name = f"{app.name}/qa@v1/"
    first_ref = app.registry.whereis(name)
    outcomes: list[str] = []
    lock = threading.Lock()

    def caller(i: int) -> None:
        for j in range(10):
            question = "boom" if i == 0 and j in (3, 7) else f"caller {i} question {j}"
            try:
                answer = qa.call_with({"question": question}, timeout=TIMEOUT).answer
                outcome = "ok" if answer else "empty"
            except ModuleCrashed as crash:
                outcome = "crashed" if question == "boom" and crash.caused_by_call else repr(crash)
            except ModuleUnavailable:
                outcome = "unavailable"  # restarting for longer than the handle retries
            except Exception as error:  # anything else is a failure of this test
                outcome = repr(error)
            with lock:
                outcomes.append(outcome)

    run_in_threads(caller, 16)
    booms = 2
    # Every call answered: the crashing ones with ModuleCrashed, and the others (some of
    # them in flight on the actor that crashed) answered, or ModuleCrashed for having been
    # in flight on it (never hung, never anything else).
    assert len(outcomes) == 160
    allowed = ("ok", "crashed", "unavailable")
    unexpected = [o for o in outcomes if o not in allowed and "ModuleCrashed" not in o]
    assert unexpected == []
    assert outcomes.count("crashed") == booms
    # A crash fails the calls in flight on that actor (at most the 15 other callers').
    assert outcomes.count("ok") >= 160 - booms - booms * 15
    assert app.registry.whereis(name) is not first_ref  # restarted
    assert qa.call(question="after the storm").answer
    assert app.root.is_alive


def test_an_input_that_crashes_the_callers_thread_is_dead_lettered(
    start_app: StartApp, sim: SimLM
) -> None:
    app = start_app(poison_threshold=2)
    qa = app.serve("qa", TracedPredict(), idempotent=True)
    with pytest.raises(DeadLettered):
        qa.call(question="boom")
    assert qa.call(question="fine").answer
    (letter,) = app.dead_letters("qa")
    assert "a bug in the predictor" in letter.traceback


def test_a_call_to_a_busy_actor_waits_its_turn(start_app: StartApp, sim: SimLM) -> None:
    app = start_app()
    qa = app.serve("qa", TracedPredict())
    ref = app.registry.whereis(f"{app.name}/qa@v1/")
    assert ref is not None
    held, release = threading.Event(), threading.Event()
    # The actor's own thread runs module.hold, holding the actor's turn.
    ref.tell(pykka.messages.ProxyCall(("module", "hold"), (held, release), {}))
    assert held.wait(TIMEOUT)
    answers: list[Any] = []
    caller = threading.Thread(target=lambda: answers.append(qa.call(question="queued")))
    try:
        caller.start()
        caller.join(0.3)
        assert caller.is_alive(), "the call waits while the actor's turn is held"
    finally:
        release.set()
    caller.join(TIMEOUT)
    assert answers
    assert answers[0].answer
    module = _module(app, "qa")
    assert module.threads == [module.threads[0]]
    assert module.threads[0] != caller.ident  # handled by the actor's own thread


@pytest.fixture
def recording(start_app: StartApp, sim: SimLM) -> Iterator[tuple[Any, RecordingLM]]:
    """An app with 2 LM slots and an LM subclass that records its calls' threads. The slots
    are a worker process's: an LM subclass overriding ``complete`` runs there in a thread of
    this process holding its slot, through its override (the event loop would skip it)."""
    lm = RecordingLM("openai/sim-model", api_base=sim.openai_base, api_key="k", cache=False)
    try:
        app = start_app(lm=lm, lm_max_in_flight=2, lm_processes=1)
        yield app, lm
    finally:
        lm.close()


def test_a_callers_lm_request_runs_on_a_pool_worker_never_in_the_caller(
    recording: tuple[Any, RecordingLM],
) -> None:
    # One path for every LM request: the caller (which took the idle actor's turn) hands
    # it to the pool and waits; a worker runs it and publishes lm.end.
    app, lm = recording
    qa = app.serve("qa", Predict("question -> answer"))
    events: list[Any] = []
    app.subscribe("lm.end", events.append)
    assert qa.call(question="mine").answer
    assert len(lm.threads) == 1
    assert lm.threads[0] != threading.get_ident()
    assert app.events.flush(5.0)
    assert len(events) == 1


def test_the_pools_bound_holds_under_many_callers(
    recording: tuple[Any, RecordingLM],
) -> None:
    app, lm = recording
    qa = app.serve("qa", Predict("question -> answer"))
    run_in_threads(lambda i: qa.call(question=f"caller {i}"), 12)
    assert len(lm.threads) == 12
    assert lm.most <= 2  # never more LM calls at once than the pool has workers
    router = app.registry.lookup(app.router_name)
    stats = supervisors.ask(router, PoolStats(), timeout=TIMEOUT)
    assert stats["busy"] == 0
    assert stats["idle"] == 2
