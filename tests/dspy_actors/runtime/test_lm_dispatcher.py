"""The LM pool's dispatcher completes no reply under its lock: a reply's callbacks may do
anything, a new submit included (a module resuming on an error makes its next request)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from typing import Any

from dspy_actors.lm._breaker import CircuitBreaker, CircuitOpen
from dspy_actors.lm._lm import LM
from dspy_actors.runtime._context import capture
from dspy_actors.runtime._errors import DeadlineExceeded, Overloaded
from dspy_actors.runtime._lm_pool import Dispatcher, LMPoolConfig, Slot
from dspy_actors.runtime._messages import LMRequest

MESSAGES = [{"role": "user", "content": "hi"}]


class _Worker:
    """A pool worker that keeps what it is given (it never answers)."""

    actor_urn = "test-worker"

    def __init__(self) -> None:
        self.got: list[Any] = []

    def send(self, work: Any) -> None:
        self.got.append(work)


def _request(lm: LM, timeout: float = 60.0) -> LMRequest:
    return LMRequest(lm, MESSAGES, {}, capture(timeout=timeout), Future())


def _resubmits(dispatcher: Dispatcher, lm: LM, request: LMRequest) -> Future[Any]:
    """When ``request`` fails, its callback submits another request (as a module does)."""
    again = _request(lm)
    request.reply.add_done_callback(lambda _f: dispatcher.submit(again))
    return again.reply


def _in_a_thread(fn: Any) -> None:
    done = threading.Event()

    def run() -> None:
        fn()
        done.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert done.wait(10.0), "the dispatcher deadlocked on its own lock"
    thread.join(10.0)


def test_a_reply_failed_for_overload_may_submit_again_from_its_callback() -> None:
    lm = LM("openai/sim-model", api_base="http://127.0.0.1:9/v1", api_key="k", cache=False)
    dispatcher = Dispatcher(LMPoolConfig(max_queue=1))
    dispatcher.submit(_request(lm))  # fills the queue (no worker takes it)
    overflow = _request(lm)
    _resubmits(dispatcher, lm, overflow)
    _in_a_thread(lambda: dispatcher.submit(overflow))
    assert isinstance(overflow.reply.exception(timeout=0), Overloaded)
    lm.close()


def test_a_reply_failed_by_an_open_breaker_or_its_deadline_may_submit_again() -> None:
    lm = LM("openai/sim-model", api_base="http://127.0.0.1:9/v1", api_key="k", cache=False)
    breaker = CircuitBreaker(name="test", failure_rate_threshold=0.5, minimum_calls=1)
    permit = breaker.acquire()
    breaker.record_failure(0.01, permit)  # open now
    dispatcher = Dispatcher(LMPoolConfig(breaker_factory=lambda _key: breaker))
    blocked = _request(lm)
    again = _resubmits(dispatcher, lm, blocked)
    expired = _request(lm, timeout=0.001)
    _resubmits(dispatcher, lm, expired)
    time.sleep(0.01)  # its deadline passes while it waits for a worker
    dispatcher.submit(blocked)  # no worker yet: both wait in the queue
    dispatcher.submit(expired)
    worker = _Worker()
    _in_a_thread(lambda: dispatcher.add_worker(worker))  # fails both, under no lock
    assert isinstance(blocked.reply.exception(timeout=0), CircuitOpen)
    assert isinstance(expired.reply.exception(timeout=0), DeadlineExceeded)
    assert isinstance(again.exception(timeout=5), CircuitOpen)  # the resubmit ran too
    lm.close()


class _Host:
    """A slot host that keeps what its slots are given (it never answers)."""

    name = "test-host"

    def __init__(self) -> None:
        self.got: list[tuple[Slot, Any]] = []

    def send(self, slot: Slot, work: Any) -> None:
        self.got.append((slot, work))


def test_a_dead_hosts_requests_wait_for_a_live_slot_not_a_sibling_of_the_dead_one() -> None:
    """A host dies with one slot busy and one idle. Its request is retried once; it must
    not be handed to the idle sibling (as dead as the busy one) and so die "twice" without
    ever reaching a live worker: it waits in the queue for the next live slot."""
    lm = LM("openai/sim-model", api_base="http://127.0.0.1:9/v1", api_key="k", cache=False)
    dispatcher = Dispatcher(LMPoolConfig())
    dead = _Host()
    busy, idle = Slot(dead, 0, "test"), Slot(dead, 1, "test")
    dispatcher.add_worker(busy)
    request = _request(lm)
    dispatcher.submit(request)  # taken by the first idle slot
    dispatcher.add_worker(idle)
    assert [slot for slot, _ in dead.got] == [busy]
    dispatcher.workers_died([busy, idle], "the host crashed")
    assert not request.reply.done()  # retried, not failed as dying twice
    assert [slot for slot, _ in dead.got] == [busy]  # and not sent to the dead sibling
    live = _Host()
    dispatcher.add_worker(Slot(live, 0, "test"))
    assert len(live.got) == 1
    assert live.got[0][1].pending.request is request
    lm.close()
