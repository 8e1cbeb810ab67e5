"""An uncached call's LM answer goes to the caller blocked on the call (runtime/_call_reply.py):
it resumes the predictor's steps in its own thread, in the idle actor's turn; what it
cannot do there (a busy actor, a caller that stopped waiting) is done as before."""

from __future__ import annotations

import queue
import threading
from typing import Any

import pykka
import pytest

import supervisors
from dspy_actors.runtime._call_reply import CallReply
from dspy_actors.runtime._errors import DeadlineExceeded
from dspy_actors.testing import HeldResponder, wait_until
from dspy_actors.testing.sim_lm import SimLM
from tests.dspy_actors.runtime.conftest import StartApp
from tests.dspy_actors.runtime.programs import TracedPredict

TIMEOUT = 10.0


def _module(app: Any, name: str) -> TracedPredict:
    ref = app.registry.whereis(name)
    assert ref is not None
    module: TracedPredict = supervisors.ask(
        ref, pykka.messages.ProxyGetAttr(("module",)), timeout=TIMEOUT
    )
    return module


@pytest.mark.parametrize("kind", ["serve", "program"])
def test_the_blocked_caller_resumes_its_call_when_the_lm_answers(
    start_app: StartApp, sim: SimLM, kind: str
) -> None:
    app = start_app()
    if kind == "serve":
        handle = app.serve("qa", TracedPredict())
        name = f"{app.name}/qa@v1/"
    else:
        handle = app.program("qa", [("answer", TracedPredict, {})])
        name = f"{app.name}/qa@v1/answer"
    events: list[Any] = []
    app.subscribe("module.*", events.append)
    answers = [handle.call(question=f"question {i}").answer for i in range(3)]
    assert all(answers)
    assert sim.request_count == 3
    module = _module(app, name)
    # The answer was parsed here, not in the actor's thread: one wake-up per call saved.
    assert module.resumed == [threading.get_ident()] * 3
    # The actor's bookkeeping is the same whichever thread resumed the call.
    assert app.events.flush(5.0)
    kinds = [event.topic for event in events]
    assert kinds.count("module.start") == 3
    assert kinds.count("module.end") == 3
    assert app.call_stats.totals()[handle.name if kind == "serve" else "qa.answer"].calls == 3


def test_a_busy_actor_resumes_the_call_in_its_own_thread(start_app: StartApp, sim: SimLM) -> None:
    held_lm = HeldResponder()
    sim.respond_with(held_lm)
    app = start_app()
    qa = app.serve("qa", TracedPredict())
    ref = app.registry.whereis(f"{app.name}/qa@v1/")
    assert ref is not None
    answers: list[Any] = []
    caller = threading.Thread(target=lambda: answers.append(qa.call(question="queued")))
    caller.start()
    held_lm.wait_for_arrivals(1, timeout=TIMEOUT)
    # The actor's own thread takes its turn and keeps it while the LM answers: the caller,
    # handed the answer, cannot take the turn, so it queues the rest for the actor.
    held, release = threading.Event(), threading.Event()
    ref.tell(pykka.messages.ProxyCall(("module", "hold"), (held, release), {}))
    try:
        assert held.wait(TIMEOUT)
        held_lm.open()
        inbox = ref.actor_inbox
        assert isinstance(inbox, queue.Queue)
        wait_until(lambda: inbox.qsize() > 0, TIMEOUT, "the answer queued")
    finally:
        release.set()
    caller.join(TIMEOUT)
    assert not caller.is_alive()
    assert answers
    assert answers[0].answer
    module = _module(app, f"{app.name}/qa@v1/")
    assert module.holder is not None
    assert module.resumed == [module.holder]  # the actor's thread, not the caller's


def test_an_answer_after_the_caller_gave_up_still_ends_the_call(
    start_app: StartApp, sim: SimLM
) -> None:
    held_lm = HeldResponder()
    sim.respond_with(held_lm)
    app = start_app()
    qa = app.serve("qa", TracedPredict())
    with pytest.raises(DeadlineExceeded):
        qa.call_with({"question": "too slow"}, timeout=0.3)
    held_lm.open()
    # The call ends on the actor all the same (the LM's deadline or its late answer): it is
    # counted, and nothing of it stays in flight.
    totals = app.call_stats.totals
    wait_until(lambda: totals().get("qa") and totals()["qa"].calls == 1, TIMEOUT, "the end")
    ref = app.registry.whereis(f"{app.name}/qa@v1/")
    assert ref is not None
    described = supervisors.ask(ref, pykka.messages.ProxyCall(("describe",), (), {}), timeout=5)
    assert described["in_flight"] == 0
    assert qa.call(question="after").answer  # and the actor serves on


# CallReply on its own. --------------------------------------------------------------------


def _waiter(reply: CallReply, timeout: float, out: list[Any]) -> threading.Thread:
    thread = threading.Thread(target=lambda: out.append(reply.wait_here(timeout)))
    thread.start()
    wait_until(lambda: reply._waiting, TIMEOUT, "the caller to wait")
    return thread


def test_work_is_handed_back_only_to_a_waiting_caller() -> None:
    reply = CallReply()
    ran: list[int] = []
    assert not reply.hand_back(lambda: ran.append(1))  # nobody waits
    out: list[Any] = []
    thread = _waiter(reply, TIMEOUT, out)

    def answer() -> None:
        ran.append(threading.get_ident())
        reply.set_result(7)

    assert reply.hand_back(answer)
    thread.join(TIMEOUT)
    assert out == [True]
    assert ran == [thread.ident]  # run by the waiting caller, in its thread
    assert reply.result(timeout=0) == 7
    assert not reply.hand_back(lambda: ran.append(2))  # done: nothing more is taken


def test_work_handed_back_as_the_reply_completes_still_runs_once() -> None:
    reply = CallReply()
    out: list[Any] = []
    thread = _waiter(reply, TIMEOUT, out)
    ran: list[int] = []
    # The reply completes (another thread answers it) while work handed back is still
    # untaken: the caller leaves its wait with the reply done and runs the work first.
    with reply._condition:
        assert reply.hand_back(lambda: ran.append(threading.get_ident()))
        reply.set_result("answered elsewhere")
    thread.join(TIMEOUT)
    assert out == [True]
    assert ran == [thread.ident]


def test_a_wait_that_times_out_takes_no_more_work() -> None:
    reply = CallReply()
    assert reply.wait_here(0.01) is False
    assert not reply.hand_back(lambda: None)  # the caller left: the sender tells the actor
