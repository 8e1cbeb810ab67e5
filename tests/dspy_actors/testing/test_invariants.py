"""Invariants: the ledger's accounting, and assertions that say exactly what is wrong."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest

import dspy_actors as dsa
from dspy_actors.runtime.app import App
from dspy_actors.testing import (
    CallLedger,
    assert_all_accounted,
    assert_no_leaked_threads,
    assert_tree_healthy,
    thread_snapshot,
)


class FakeHandle:
    """Answers by the question: "ok", "crash" (ModuleCrashed), "bug" (a bare exception),
    "slow" (sleeps past the ledger's hang bound)."""

    def __init__(self, executor: ThreadPoolExecutor) -> None:
        self.executor = executor
        self.release = threading.Event()

    def call_with(self, inputs: Mapping[str, Any]) -> Any:
        question = inputs["question"]
        if question == "crash":
            raise dsa.ModuleCrashed("qa.answer", "the module actor was killed")
        if question == "bug":
            raise KeyError("a bare error no caller can act on")
        if question == "slow":
            self.release.wait(5.0)
        return dsa.Prediction(answer=question)

    def submit(self, **inputs: Any) -> Future[Any]:
        return self.executor.submit(self.call_with, inputs)


@pytest.fixture
def handle() -> Iterator[FakeHandle]:
    with ThreadPoolExecutor(4, thread_name_prefix="fake-handle") as executor:
        fake = FakeHandle(executor)
        yield fake
        fake.release.set()


def test_ledger_counts_answered_and_clear_failures(handle: FakeHandle) -> None:
    ledger = CallLedger(handle, hang_after_s=5.0)
    ledger.run([{"question": q} for q in ["ok", "crash", "ok", "crash", "ok"]], concurrency=2)
    future = ledger.submit(question="ok")
    assert future.result(timeout=5.0).answer == "ok"
    assert_all_accounted(ledger)
    assert (ledger.sent, ledger.answered, ledger.failed, ledger.hung) == (6, 4, 2, 0)
    assert ledger.errors() == {"ModuleCrashed": 2}
    assert len(ledger.latencies()) == 4
    assert ledger.percentile(0.5) is not None
    assert "answered 4" in ledger.summary()


def test_unclear_errors_are_named(handle: FakeHandle) -> None:
    ledger = CallLedger(handle)
    with pytest.raises(KeyError):
        ledger.call(question="bug")
    with pytest.raises(
        AssertionError, match=r"1 call\(s\) failed with an unclear error \{'KeyError': 1\}"
    ):
        assert_all_accounted(ledger)


def test_max_failed_bounds_even_clear_failures(handle: FakeHandle) -> None:
    ledger = CallLedger(handle)
    with pytest.raises(dsa.ModuleCrashed):
        ledger.call(question="crash")
    assert_all_accounted(ledger, max_failed=1)
    with pytest.raises(AssertionError, match=r"1 call\(s\) failed, more than 0"):
        assert_all_accounted(ledger, max_failed=0)


def test_a_call_past_the_bound_is_hung_and_listed(handle: FakeHandle) -> None:
    ledger = CallLedger(handle, hang_after_s=0.2)
    ledger.submit(question="ok").result(timeout=5.0)
    slow = ledger.submit(question="slow")
    # Done callbacks run in the order they were added: once this one runs, the ledger's
    # own (which records the answer) has run for the late answer.
    late_answer_seen = threading.Event()
    slow.add_done_callback(lambda _f: late_answer_seen.set())
    with pytest.raises(AssertionError, match=r"1 call\(s\) hung .*'question': 'slow'"):
        assert_all_accounted(ledger)
    handle.release.set()
    assert late_answer_seen.wait(30.0)
    assert ledger.hung == 1  # a late answer does not undo it


def test_leaked_threads_are_named_and_ended_ones_are_not(handle: FakeHandle) -> None:
    before = thread_snapshot()
    stop = threading.Event()
    short = threading.Thread(target=time.sleep, args=(0.1,), name="short-lived")
    short.start()
    assert_no_leaked_threads(before, grace=5.0)  # it ends within the grace
    lingering = threading.Thread(target=stop.wait, args=(10.0,), name="lingering-thread")
    lingering.start()
    try:
        with pytest.raises(AssertionError, match="lingering-thread"):
            assert_no_leaked_threads(before, grace=0.1)
        assert_no_leaked_threads(before, grace=0.1, allow_prefixes=("lingering",))
    finally:
        stop.set()
        lingering.join(5.0)


def test_tree_healthy_returns_the_tree(app: App) -> None:
    app.serve("qa", dsa.Predict("question -> answer"))
    tree = assert_tree_healthy(app, within_s=5.0)
    assert {node.id for node in tree.walk()} >= {"store", "lm", "modules", "qa@v1"}


def test_an_unhealthy_tree_is_listed_node_by_node(app: App) -> None:
    app.root.terminate_child("runs")
    try:
        with pytest.raises(AssertionError, match=rf"{app.name}/runs: terminated") as error:
            assert_tree_healthy(app, within_s=0.2)
        assert "count_children active" not in str(error.value)
        assert "modules (supervisor" in str(error.value)
    finally:
        app.root.restart_child("runs")
    assert_tree_healthy(app, within_s=5.0)


def test_a_dead_root_is_reported(app: App) -> None:
    app.stop()
    with pytest.raises(AssertionError, match="the root exited"):
        assert_tree_healthy(app, within_s=5.0)
