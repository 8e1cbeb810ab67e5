"""The LM pool on event loops (the default): thousands in flight without threads, a loop
killed mid-flight, local overload vs the breaker, cancellation, and the LM's own timeout
under a later call deadline (issue 20, item 1)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, wait
from typing import Any

import pytest

from dspy_actors.lm import LM, LMError, LMTimeout, RetryPolicy, ServerError
from dspy_actors.lm._breaker import CircuitBreaker, CircuitOpen
from dspy_actors.modules._predict import Predict
from dspy_actors.runtime._context import capture
from dspy_actors.runtime._errors import Overloaded
from dspy_actors.runtime._lm_loop import LMLoop
from dspy_actors.runtime._lm_pool import (
    Dispatcher,
    LMOverloaded,
    LMPoolConfig,
    submit_lm_request,
)
from dspy_actors.testing._faults import Fault
from dspy_actors.testing._polling import wait_until
from dspy_actors.testing.sim_lm import SimLM
from tests.dspy_actors.runtime.conftest import StartApp, kill_a_loop_mid_flight

MESSAGES = [{"role": "user", "content": "question: hi"}]


@pytest.fixture
def loop_pool() -> Iterator[Callable[..., Dispatcher]]:
    """A dispatcher with one LMLoop actor offering ``slots`` slots (stopped after)."""
    refs: list[Any] = []

    def make(slots: int, **config: Any) -> Dispatcher:
        dispatcher = Dispatcher(LMPoolConfig(**config))
        ref = LMLoop.start(f"test-loop-{len(refs)}", dispatcher, slots)
        refs.append(ref)
        wait_until(lambda: dispatcher.stats()["idle"] == slots)  # its slots are offered
        _loops[ref.actor_urn] = ref.proxy().loop.get(timeout=10.0)
        return dispatcher

    yield make
    _loops.clear()
    for ref in refs:
        ref.stop(timeout=10.0)


_loops: dict[str, Any] = {}  # the EventLoopThread of each loop_pool loop


def _submit(dispatcher: Dispatcher, lm: LM, n: int, timeout: float = 60.0) -> list[Future[Any]]:
    return [
        submit_lm_request(
            dispatcher,
            lm,
            [{"role": "user", "content": f"question: q{i}"}],
            {},
            capture(timeout=timeout),
        )
        for i in range(n)
    ]


# Issue 20, item 1: the LM's own per-attempt timeout and the call's deadline both hold.


@pytest.mark.parametrize("processes", [0, 1], ids=["loops", "processes"])
def test_the_lms_own_timeout_holds_under_a_later_call_deadline(
    start_app: StartApp, sim: SimLM, make_lm: Callable[..., LM], processes: int
) -> None:
    sim.inject(Fault.hang(60.0), times=10)
    lm = make_lm(timeout=0.5, retry_policy=RetryPolicy(max_retries=0))
    app = start_app(lm=lm, lm_processes=processes, call_timeout=30.0)
    qa = app.serve("qa", Predict("question -> answer"))
    began = time.monotonic()
    with pytest.raises(LMTimeout, match=r"no answer within 0\.5s"):
        qa.call(question="hangs")
    # Before the fix the served call waited out the hang (the 30 s deadline replaced the
    # LM's timeout); in-process it raised after 0.5 s. 20 s leaves a busy machine slack.
    assert time.monotonic() - began < 20.0


@pytest.mark.parametrize("processes", [0, 1], ids=["loops", "processes"])
def test_the_call_deadline_holds_when_sooner_than_the_lms_timeout(
    start_app: StartApp, sim: SimLM, make_lm: Callable[..., LM], processes: int
) -> None:
    sim.inject(Fault.hang(60.0), times=10)
    lm = make_lm(timeout=30.0, retry_policy=RetryPolicy(max_retries=0))
    app = start_app(lm=lm, lm_processes=processes)
    qa = app.serve("qa", Predict("question -> answer"))
    began = time.monotonic()
    with pytest.raises(Exception, match=r"(?i)deadline|no answer within"):
        qa.call_with({"question": "hangs"}, timeout=0.5)
    assert time.monotonic() - began < 20.0  # the 0.5 s deadline, not the 30 s timeout


# Many in flight, faults, crashes.


@pytest.mark.slow
def test_thousands_of_concurrent_calls_with_faults_all_get_answers(
    start_app: StartApp, make_lm: Callable[..., LM]
) -> None:
    with SimLM(latency=0.05, record_requests=False, seed=7) as sim:
        sim.inject_rate(Fault.server_error(), 0.1)
        sim.inject_rate(Fault.reset(), 0.05)
        sim.inject_rate(Fault.rate_limited(retry_after=0.05), 0.05)
        lm = LM(
            "openai/sim-model",
            api_base=sim.openai_base,
            api_key="k",
            cache=False,
            retry_policy=RetryPolicy(max_retries=6, base_delay=0.01, max_delay=0.05),
        )
        app = start_app(lm=lm, lm_max_in_flight=256, max_in_flight=4096)
        qa = app.serve("qa", Predict("question -> answer"))
        futures = [qa.submit(question=f"q{i}") for i in range(2000)]
        done, pending = wait(futures, timeout=300.0)
        lm.close()
    assert not pending, f"{len(pending)} calls never answered"
    errors = [f.exception() for f in done if f.exception() is not None]
    # Retries absorb the faults; whatever is left is a clear LM error, never a hang.
    assert all(isinstance(e, LMError) for e in errors), errors[:3]
    assert len(errors) <= 20


def test_a_loop_killed_mid_flight_loses_no_call(start_app: StartApp) -> None:
    with SimLM(latency=0.5) as sim:
        lm = LM("openai/sim-model", api_base=sim.openai_base, api_key="k", cache=False)
        app = start_app(lm=lm, lm_loops=2, lm_max_in_flight=64)
        kill_a_loop_mid_flight(app, sim)
        app.stop()
        lm.close()


def test_a_caller_that_gives_up_frees_its_slot_at_once(
    loop_pool: Callable[..., Dispatcher],
) -> None:
    with SimLM(latency=20.0) as sim:
        lm = LM("openai/sim-model", api_base=sim.openai_base, api_key="k", cache=False)
        dispatcher = loop_pool(4)
        replies = _submit(dispatcher, lm, 4)
        wait_until(lambda: sim.request_count == 4)
        assert dispatcher.stats()["busy"] == 4
        for reply in replies:
            reply.cancel()
        wait_until(lambda: dispatcher.stats()["busy"] == 0, timeout=10.0)
        sim.latency = 0.0
        assert _submit(dispatcher, lm, 1)[0].result(timeout=30.0).outputs
        lm.close()


# Local overload vs the provider's health.


def test_local_overload_answers_lm_overloaded_and_never_trips_the_breaker(
    loop_pool: Callable[..., Dispatcher],
) -> None:
    breaker = CircuitBreaker(
        name="sim",
        minimum_calls=2,
        window_size=10,
        slow_call_duration=0.4,
        slow_call_rate_threshold=0.5,
    )
    with SimLM(latency=0.1) as sim:
        lm = LM("openai/sim-model", api_base=sim.openai_base, api_key="k", cache=False)
        dispatcher = loop_pool(2, max_queue=30, breaker_factory=lambda _key: breaker)
        replies = _submit(dispatcher, lm, 40)
        refused = [r for r in replies if r.done() and isinstance(r.exception(), Overloaded)]
        assert len(refused) == 8  # 2 in flight, 30 queued, the rest refused at once
        error = refused[0].exception()
        assert isinstance(error, LMOverloaded)
        assert "lm_max_in_flight" in str(error)
        assert "lm_max_queue" in str(error)
        accepted = [r for r in replies if r not in refused]
        # The last of them waits ~1.6 s in the queue: queueing is not a slow call.
        assert all(r.result(timeout=60.0).outputs for r in accepted)
        assert breaker.state == "closed"
        lm.close()


def test_the_breaker_opens_for_a_failing_provider(loop_pool: Callable[..., Dispatcher]) -> None:
    breaker = CircuitBreaker(name="sim", minimum_calls=4, window_size=10, wait_in_open=60.0)
    with SimLM() as sim:
        sim.inject(Fault.server_error(), times=1000)
        lm = LM(
            "openai/sim-model",
            api_base=sim.openai_base,
            api_key="k",
            cache=False,
            retry_policy=RetryPolicy(max_retries=0),
        )
        dispatcher = loop_pool(4, breaker_factory=lambda _key: breaker)
        for reply in _submit(dispatcher, lm, 4):
            assert isinstance(reply.exception(timeout=30.0), ServerError)
        wait_until(lambda: breaker.state == "open", timeout=10.0)
        assert isinstance(_submit(dispatcher, lm, 1)[0].exception(timeout=10.0), CircuitOpen)
        lm.close()


@pytest.mark.slow
def test_4096_in_flight_hold_no_thread_each(loop_pool: Callable[..., Dispatcher]) -> None:
    from bench.loopback_server import LoopbackServer, raise_open_files_limit

    if raise_open_files_limit(20_000) < 9_000:
        pytest.skip("this machine allows too few open files for 4,096 sockets")
    with LoopbackServer(latency=4.0) as server:
        lm = LM("openai/bench", api_base=server.base_url, api_key="k", cache=False, timeout=120)
        threads_before = threading.active_count()
        dispatcher = loop_pool(4096)
        replies = _submit(dispatcher, lm, 4096, timeout=300.0)
        wait_until(lambda: dispatcher.stats()["busy"] == 4096, timeout=60.0)
        in_flight_threads = threading.active_count()
        assert all(r.result(timeout=300.0).outputs for r in replies)
        lm.close()
    # The loop's actor and its thread, plus a few helpers (DNS, timers): not one per call.
    assert in_flight_threads - threads_before <= 2 + 8, in_flight_threads - threads_before


def test_time_the_loop_runs_late_is_not_a_slow_call(loop_pool: Callable[..., Dispatcher]) -> None:
    """Answers that sit unread while the loop is busy (here: a callback hogging it for
    1.5 s) are this process's queueing, not the provider's slowness."""
    breaker = CircuitBreaker(
        name="sim",
        minimum_calls=2,
        window_size=10,
        slow_call_duration=0.8,
        slow_call_rate_threshold=0.5,
    )
    with SimLM(latency=0.3) as sim:
        lm = LM("openai/sim-model", api_base=sim.openai_base, api_key="k", cache=False)
        dispatcher = loop_pool(8, breaker_factory=lambda _key: breaker)
        loop = next(iter(_loops.values()))
        replies = _submit(dispatcher, lm, 8)
        wait_until(lambda: sim.request_count == 8)
        loop._loop.call_soon_threadsafe(time.sleep, 1.5)  # the loop falls 1.5 s behind
        assert all(r.result(timeout=60.0).outputs for r in replies)
        assert breaker.state == "closed"
        lm.close()
