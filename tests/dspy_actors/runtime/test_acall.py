"""``await handle.acall(...)`` holds no thread per call in flight, for a one-step program,
a three-step pipeline and a composite with a user-written forward; cancelling an awaiting
caller frees the call's slots; thousands of acalls with faults and kills all end."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable
from typing import Any

import pytest

import supervisors
from dspy_actors.lm.errors import LMError
from dspy_actors.modules._chain_of_thought import ChainOfThought
from dspy_actors.modules._predict import Predict
from dspy_actors.primitives.module import Module
from dspy_actors.primitives.prediction import Prediction
from dspy_actors.runtime._errors import RuntimeCallError
from dspy_actors.runtime.app import App
from dspy_actors.runtime.handle import ProgramHandle
from dspy_actors.testing._faults import Fault
from dspy_actors.testing._polling import wait_until
from dspy_actors.testing.sim_lm import SimLM, SimRequest
from dspy_actors.testing.sim_responder import default_responder
from tests.dspy_actors.runtime.conftest import StartApp
from tests.dspy_actors.runtime.programs import RAG, Retriever


class Draft(Module):
    """A composite with two sub-module calls in its forward."""

    def __init__(self) -> None:
        super().__init__()
        self.outline = Predict("question -> outline")
        self.write = ChainOfThought("question, outline -> answer")

    def forward(self, question: str) -> Prediction:
        outline = self.outline(question=question).outline
        return self.write(question=question, outline=outline)


class Gate:
    """A responder that holds every request until released (thread-safe)."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.waiting = 0
        self._lock = threading.Lock()

    def __call__(self, request: SimRequest) -> Any:
        with self._lock:
            self.waiting += 1
        self.open.wait(30.0)
        return default_responder(request)


def _serve(app: App, kind: str) -> ProgramHandle:
    if kind == "one-step":
        return app.serve("p", Predict("question -> answer"))
    if kind == "pipeline":
        return app.program(
            "p",
            [
                ("retrieve", Retriever, {"k": 1}),
                ("draft", Predict, {"signature": "context: list[str], question -> draft"}),
                ("answer", Predict, {"signature": "draft, question -> answer"}),
            ],
        )
    return app.serve("p", Draft())


def _in_flight(handle: ProgramHandle) -> int:
    return handle._program.gate.total


async def _gather_all(calls: list[Awaitable[Any]], timeout: float) -> list[Any]:
    return await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), timeout)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("kind", ["one-step", "pipeline", "composite"])
def test_many_acalls_in_flight_hold_no_thread_each(
    start_app: StartApp, sim: SimLM, kind: str
) -> None:
    """With 400 acalls in flight the process has no more threads than before them plus
    the LM pool's (bounded) connections: a thread per call would add 400."""
    calls = 400
    app = start_app(lm_max_in_flight=4)
    handle = _serve(app, kind)
    asyncio.run(handle.acall(question="warm up"))  # every actor and LM worker started
    gate = Gate()
    sim.respond_with(gate)
    before = threading.active_count()
    peak = 0

    async def main() -> list[Any]:
        nonlocal peak
        tasks = [asyncio.ensure_future(handle.acall(question=f"q{i}")) for i in range(calls)]
        # Wait (on the condition, not a clock) until every call is in flight.
        while _in_flight(handle) < calls or gate.waiting < 4:
            await asyncio.sleep(0.01)
        peak = threading.active_count()
        gate.open.set()
        return await _gather_all(list(tasks), timeout=120.0)

    results = asyncio.run(main())
    assert all(isinstance(r, Prediction) and r.answer for r in results), results[:3]
    # 4 LM workers' connections (server threads) and a timer at most: never one per call.
    assert peak - before <= 4 + 4, (before, peak)
    assert _in_flight(handle) == 0


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["one-step", "pipeline", "composite"])
def test_cancelling_an_awaiting_caller_frees_its_slots(
    start_app: StartApp, sim: SimLM, kind: str
) -> None:
    app = start_app(lm_max_in_flight=2)
    handle = _serve(app, kind)
    gate = Gate()
    sim.respond_with(gate)
    # The actors holding the call while its LM request waits.
    prefix = handle._program.entry_name
    holders = {"one-step": [""], "pipeline": ["draft"], "composite": ["", "outline"]}[kind]
    refs = [app.registry.whereis(prefix + path) for path in holders]
    assert all(ref is not None for ref in refs)

    def module_in_flight() -> int:
        return sum(int(r.proxy().describe().get(timeout=10.0)["in_flight"]) for r in refs)

    async def main() -> None:
        task = asyncio.ensure_future(handle.acall(question="cancel me"))
        while gate.waiting < 1:
            await asyncio.sleep(0.01)
        assert _in_flight(handle) == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert _in_flight(handle) == 0  # the program's slot: freed as the task ended
    wait_until(lambda: module_in_flight() == 0, timeout=10.0, what="module slot freed")
    gate.open.set()
    assert asyncio.run(handle.acall(question="after")).answer


def test_a_composite_serves_other_calls_while_one_forward_waits(start_app: StartApp) -> None:
    """A forward parked on a future (dspy_actors.waiting.wait_future) leaves its actor free:
    a second call runs to its end on the same actor meanwhile."""
    from concurrent.futures import Future

    from dspy_actors.waiting import wait_future

    released: Future[str] = Future()

    class Waits(Module):
        def forward(self, question: str) -> Prediction:
            if question == "wait":
                return Prediction(answer=wait_future(released, timeout=30.0))
            return Prediction(answer="quick")

    app = start_app()
    handle = app.serve("w", Waits())

    async def main() -> tuple[Any, Any]:
        slow = asyncio.ensure_future(handle.acall(question="wait"))
        while _in_flight(handle) < 1:
            await asyncio.sleep(0.01)
        quick = await asyncio.wait_for(handle.acall(question="other"), 30.0)
        assert not slow.done()
        released.set_result("released")
        return quick, await asyncio.wait_for(slow, 30.0)

    quick, slow = asyncio.run(main())
    assert (quick.answer, slow.answer) == ("quick", "released")


def test_a_forward_wait_with_a_timeout_ends_by_it(start_app: StartApp) -> None:
    from concurrent.futures import Future
    from concurrent.futures import TimeoutError as FutureTimeout

    from dspy_actors.waiting import wait_future

    never: Future[str] = Future()

    class TimesOut(Module):
        def forward(self, question: str) -> Prediction:
            try:
                wait_future(never, timeout=0.05)
            except FutureTimeout as error:
                return Prediction(answer=f"gave up: {error}")
            return Prediction(answer="impossible")

    app = start_app()
    answer = app.serve("t", TimesOut()).call(question="q").answer
    assert answer.startswith("gave up: the future was not done within 0.05 s")


def test_blocking_forward_runs_in_a_call_thread(start_app: StartApp, sim: SimLM) -> None:
    """``blocking_forward = True``: forward may block on its own I/O (here an Event) without
    holding up the actor; two calls block at once."""
    both_in = threading.Barrier(2, timeout=20.0)

    class BlocksOnIO(Module):
        blocking_forward = True

        def forward(self, question: str) -> Prediction:
            both_in.wait()  # only passes if two forwards run at once
            return Prediction(answer=threading.current_thread().name)

    app = start_app()
    handle = app.serve("b", BlocksOnIO())

    async def main() -> list[Any]:
        return await _gather_all([handle.acall(question=str(i)) for i in range(2)], 30.0)

    results = asyncio.run(main())
    assert all(r.answer.startswith("call-") for r in results), results


def test_sync_call_from_users_threads_still_works_on_a_composite(start_app: StartApp) -> None:
    app = start_app()
    rag = app.serve("rag", RAG())
    answers: list[str] = []

    def call(i: int) -> None:
        answers.append(rag.call(question=f"q{i}").answer)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60.0)
    assert len(answers) == 16
    assert all(answers)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("kind", ["one-step", "pipeline", "composite"])
def test_thousands_of_acalls_with_faults_and_kills_each_get_an_answer_or_a_clear_error(
    start_app: StartApp, sim: SimLM, kind: str
) -> None:
    calls = 2000
    app = start_app(lm_max_in_flight=16, breaker={"failure_rate_threshold": 1.0})
    handle = _serve(app, kind)
    sim.inject_rate(Fault.server_error(500), 0.05)
    sim.inject_rate(Fault.reset(), 0.02)
    victim = {"one-step": "", "pipeline": "draft", "composite": "write"}[kind]
    kills = 0

    async def killer() -> None:
        nonlocal kills
        for _ in range(3):
            while _in_flight(handle) < 200:
                await asyncio.sleep(0.01)
            ref = app.registry.whereis(handle._program.entry_name + victim)
            if ref is not None:
                supervisors.kill(ref)
                kills += 1
            await asyncio.sleep(0.05)

    async def main() -> list[Any]:
        tasks = [
            asyncio.ensure_future(
                handle.acall_with({"question": f"q{i}"}, timeout=120.0, idempotent=i % 2 == 0)
            )
            for i in range(calls)
        ]
        await asyncio.wait_for(killer(), 60.0)
        return await _gather_all(list(tasks), timeout=240.0)

    results = asyncio.run(main())
    assert kills >= 1
    answered = [r for r in results if isinstance(r, Prediction)]
    errors = [r for r in results if isinstance(r, BaseException)]
    assert len(answered) + len(errors) == calls
    unclear = [e for e in errors if not isinstance(e, RuntimeCallError | LMError)]
    assert not unclear, unclear[:3]
    assert all(str(e) for e in errors)
    # Idempotent calls (every other one) are retried after a crash: most of them answer.
    retried = [r for i, r in enumerate(results) if i % 2 == 0]
    assert sum(isinstance(r, Prediction) for r in retried) > len(retried) // 2, errors[:3]
    assert _in_flight(handle) == 0


def test_acall_honours_its_deadline(start_app: StartApp, sim: SimLM) -> None:
    from dspy_actors.runtime._errors import DeadlineExceeded

    gate = Gate()
    sim.respond_with(gate)
    app = start_app()
    rag = app.serve("rag", RAG())
    try:
        with pytest.raises(DeadlineExceeded):
            asyncio.run(rag.acall_with({"question": "slow"}, timeout=0.3))
    finally:
        gate.open.set()


class Outer(Module):
    """A composite of a composite: two levels of parked forwards."""

    def __init__(self) -> None:
        super().__init__()
        self.draft = Draft()
        self.check = Predict("answer -> verdict")

    def forward(self, question: str) -> Prediction:
        answer = self.draft(question=question).answer
        verdict = self.check(answer=answer).verdict
        return Prediction(answer=answer, verdict=verdict)


def test_nested_composites_answer_many_acalls_with_few_threads(
    start_app: StartApp, sim: SimLM
) -> None:
    app = start_app(lm_max_in_flight=4)
    outer = app.serve("outer", Outer())
    asyncio.run(outer.acall(question="warm up"))
    before = threading.active_count()

    async def main() -> list[Any]:
        return await _gather_all([outer.acall(question=f"q{i}") for i in range(200)], 120.0)

    results = asyncio.run(main())
    assert all(isinstance(r, Prediction) and r.verdict for r in results), results[:3]
    assert threading.active_count() - before <= 4 + 4
    assert len(sim.requests) == 3 * 201
