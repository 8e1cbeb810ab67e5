"""SupervisedActor reports its exit reason on every path Pykka can take; monitors see it."""

from __future__ import annotations

import threading
from typing import Any

import pykka
import pytest
from pykka import ThreadingFuture
from pykka._envelope import Envelope

import supervisors as sup
from dspy_actors.testing._polling import wait_until
from tests.supervisors.actors import Journal, Worker


def test_normal_stop_reports_normal_and_runs_on_stop() -> None:
    journal = Journal()
    ref = Worker.start("w", journal)
    downs: list[sup.Down] = []
    sup.monitor(ref, downs.append)
    ref.tell("stop")
    assert sup.wait_for_exit(ref, 5.0) == sup.NORMAL
    assert journal.of("stop") == ["w"]
    assert [d.reason for d in downs] == [sup.NORMAL]
    assert downs[0].actor is ref


def test_external_pykka_stop_is_a_normal_exit() -> None:
    ref = Worker.start()
    ref.stop(block=True, timeout=5.0)
    assert sup.wait_for_exit(ref, 5.0) == sup.NORMAL


def test_crash_in_tell_reports_the_exception_and_runs_on_failure() -> None:
    journal = Journal()
    ref = Worker.start("w", journal)
    ref.tell("crash")
    reason = sup.wait_for_exit(ref, 5.0)
    assert reason is not None
    assert reason.kind == "crash"
    assert reason.abnormal
    assert isinstance(reason.exception, ValueError)
    assert "crashed on purpose" in str(reason)
    assert journal.of("failure") == ["w"]
    assert journal.of("stop") == []


def test_failing_on_start_reports_crash_with_its_exception() -> None:
    ref = Worker.start("w", fail_start=lambda: True)
    reason = sup.wait_for_exit(ref, 5.0)
    assert reason is not None
    assert reason.kind == "crash"
    assert isinstance(reason.exception, RuntimeError)
    assert "refuses to start" in str(reason.exception)


class FailingStop(sup.SupervisedActor):
    def on_stop(self) -> None:
        raise OSError("cannot flush")


def test_exception_in_on_stop_is_a_crash() -> None:
    ref = FailingStop.start()
    ref.stop(block=False)
    reason = sup.wait_for_exit(ref, 5.0)
    assert reason is not None
    assert reason.kind == "crash"
    assert isinstance(reason.exception, OSError)


def test_ask_error_goes_to_caller_and_actor_keeps_running_by_default() -> None:
    ref = Worker.start()
    with pytest.raises(ValueError, match="crashed on purpose"):
        sup.ask(ref, "crash", timeout=5.0)
    assert ref.is_alive()
    assert sup.ask(ref, 1, timeout=5.0) == ("worker", 1)
    ref.stop(block=True, timeout=5.0)


class CrashOnAsk(Worker):
    crash_on_ask_error = True


def test_crash_on_ask_error_gives_caller_the_exception_and_crashes_the_actor() -> None:
    journal = Journal()
    ref = CrashOnAsk.start("w", journal)
    with pytest.raises(ValueError, match="crashed on purpose"):
        sup.ask(ref, "crash", timeout=5.0)
    reason = sup.wait_for_exit(ref, 5.0)
    assert reason is not None
    assert reason.kind == "crash"
    assert isinstance(reason.exception, ValueError)
    assert journal.of("failure") == ["w"]


class RaisesBaseException(sup.SupervisedActor):
    def on_receive(self, message: Any) -> Any:
        raise SystemExit("bye")


def test_base_exception_crashes_only_that_actor() -> None:
    bystander = Worker.start("bystander")
    ref = RaisesBaseException.start()
    with pytest.raises(sup.ActorCrashed, match="bye"):
        sup.ask(ref, "anything", timeout=5.0)
    reason = sup.wait_for_exit(ref, 5.0)
    assert reason is not None
    assert reason.kind == "crash"
    assert isinstance(reason.exception, SystemExit)
    assert bystander.is_alive(), "Pykka would have stopped every actor; we must not"
    bystander.stop(block=True, timeout=5.0)


def test_requested_shutdown_skips_queued_messages_and_fails_their_asks() -> None:
    ref = Worker.start()
    entered, release = threading.Event(), threading.Event()
    busy = ref.ask(("block", entered, release), block=False)
    assert entered.wait(5.0)
    queued = ref.ask("never handled", block=False)
    sup.request_exit(ref, sup.SHUTDOWN)
    release.set()
    assert busy.get(timeout=5.0) == "released"
    with pytest.raises(pykka.ActorDeadError):
        queued.get(timeout=5.0)
    assert sup.wait_for_exit(ref, 5.0) == sup.SHUTDOWN


def test_kill_reports_killed() -> None:
    ref = Worker.start()
    sup.kill(ref)
    assert sup.wait_for_exit(ref, 5.0) == sup.KILLED


def test_monitoring_an_already_dead_actor_delivers_down_with_its_reason() -> None:
    ref = Worker.start()
    ref.tell("crash")
    sup.wait_for_exit(ref, 5.0)
    downs: list[sup.Down] = []
    sup.monitor(ref, downs.append)
    assert len(downs) == 1
    assert downs[0].reason.kind == "crash"


class Watcher(sup.SupervisedActor):
    def __init__(self) -> None:
        super().__init__()
        self.downs: list[sup.Down] = []

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, sup.Down):
            self.downs.append(message)
            return None
        return list(self.downs)


def test_an_actor_can_monitor_another_and_gets_down_as_a_message() -> None:
    watcher = Watcher.start()
    ref = Worker.start()
    mref = sup.monitor(ref, watcher)
    ref.tell("crash")
    wait_until(lambda: len(sup.ask(watcher, "list", timeout=5.0)) == 1)
    (down,) = sup.ask(watcher, "list", timeout=5.0)
    assert down.monitor is mref
    assert down.reason.kind == "crash"
    watcher.stop(block=True, timeout=5.0)


def test_demonitor_stops_delivery() -> None:
    ref = Worker.start()
    downs: list[sup.Down] = []
    mref = sup.monitor(ref, downs.append)
    assert sup.demonitor(ref, mref) is True
    assert sup.demonitor(ref, mref) is False
    ref.stop(block=True, timeout=5.0)
    sup.wait_for_exit(ref, 5.0)
    assert downs == []


def test_a_failing_monitor_callback_does_not_break_others() -> None:
    ref = Worker.start()
    downs: list[sup.Down] = []

    def broken(_down: sup.Down) -> None:
        raise RuntimeError("monitor bug")

    sup.monitor(ref, broken)
    sup.monitor(ref, downs.append)
    ref.stop(block=True, timeout=5.0)
    wait_until(lambda: len(downs) == 1)


class PlainPykka(pykka.ThreadingActor):
    def on_receive(self, message: Any) -> Any:
        if message == "crash":
            raise KeyError("plain")
        return message


def test_plain_pykka_actors_cannot_be_monitored_but_can_be_wrapped() -> None:
    plain = PlainPykka.start()
    with pytest.raises(TypeError, match="supervised"):
        sup.monitor(plain, lambda d: None)
    plain.stop(block=True, timeout=5.0)

    wrapped = sup.supervised(PlainPykka)
    assert wrapped is sup.supervised(PlainPykka)
    assert wrapped.__name__ == "PlainPykka"
    ref = wrapped.start()
    ref.tell("crash")
    reason = sup.wait_for_exit(ref, 5.0)
    assert reason is not None
    assert isinstance(reason.exception, KeyError)


def test_ask_on_a_dead_actor_fails_fast() -> None:
    ref = Worker.start()
    ref.stop(block=True, timeout=5.0)
    with pytest.raises(pykka.ActorDeadError):
        sup.ask(ref, 1, timeout=30.0)


def test_ask_racing_with_a_crash_never_hangs() -> None:
    """Many callers ask while the actor crashes: each gets an answer or ActorDeadError."""
    outcomes: list[str] = []
    lock = threading.Lock()

    def caller(target: pykka.ActorRef[Any], start: threading.Barrier, index: int) -> None:
        start.wait(timeout=5.0)
        for n in range(50):
            try:
                sup.ask(target, (index, n), timeout=30.0)
                result = "answered"
            except pykka.ActorDeadError:
                result = "dead"
            with lock:
                outcomes.append(result)

    for _round in range(20):
        outcomes.clear()
        ref = Worker.start()
        start = threading.Barrier(9)
        threads = [threading.Thread(target=caller, args=(ref, start, i)) for i in range(8)]
        for t in threads:
            t.start()
        start.wait(timeout=5.0)
        ref.tell("crash")
        for t in threads:
            t.join(timeout=30.0)
        assert not any(t.is_alive() for t in threads), "an ask hung"
        assert len(outcomes) == 8 * 50
        assert set(outcomes) <= {"answered", "dead"}


def test_a_message_stranded_in_a_dead_inbox_is_answered_with_actor_dead() -> None:
    """The race Pykka leaves open: a put after the final drain. We answer it, never hang."""
    ref = Worker.start()
    ref.stop(block=True, timeout=5.0)
    sup.wait_for_exit(ref, 5.0)
    future: pykka.ThreadingFuture[Any] = pykka.ThreadingFuture()
    from pykka._envelope import Envelope

    ref.actor_inbox.put(Envelope("late", reply_to=future))
    sup.drain_stranded(ref)
    with pytest.raises(pykka.ActorDeadError):
        future.get(timeout=1.0)


def test_exit_reason_strings_are_readable() -> None:
    assert str(sup.NORMAL) == "normal"
    assert str(sup.ExitReason.crash(ValueError("x"))) == "crash: ValueError('x')"
    assert not sup.SHUTDOWN.abnormal
    assert sup.KILLED.abnormal


def test_stranded_messages_are_taken_once_however_many_threads_drain() -> None:
    """Messages put in a stopped actor's inbox (past tell's alive check) are each handled
    exactly once while several senders drain at once; an ask among them gets
    ActorDeadError and never waits forever."""
    ref = Worker.start()
    ref.stop(timeout=5.0)
    assert sup.wait_for_exit(ref, 5.0) is not None
    ask_reply = ThreadingFuture[Any]()
    ref.actor_inbox.put(Envelope("asked", reply_to=ask_reply))
    for i in range(200):
        ref.actor_inbox.put(Envelope(i))
    seen: list[Any] = []
    seen_lock = threading.Lock()

    def record(message: Any) -> None:
        with seen_lock:
            seen.append(message)

    barrier = threading.Barrier(4, timeout=5.0)

    def drain() -> None:
        barrier.wait()
        sup.drain_stranded(ref, record)

    drainers = [threading.Thread(target=drain, name=f"drainer-{i}") for i in range(4)]
    for thread in drainers:
        thread.start()
    for thread in drainers:
        thread.join(5.0)
    assert sorted(m for m in seen if m != "asked") == list(range(200))
    assert seen.count("asked") == 1
    with pytest.raises(pykka.ActorDeadError):
        ask_reply.get(timeout=1.0)
