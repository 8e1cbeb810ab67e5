"""tell_inline: a sender handles a message in its own thread while the actor is idle,
holding the actor's turn, so the actor's guarantees hold whichever thread handles it."""

from __future__ import annotations

import threading
from typing import Any, ClassVar

import pykka
import pytest

import supervisors as sup
from dspy_actors.testing._polling import wait_until

TIMEOUT = 10.0


class Recorder(sup.SupervisedActor):
    """Records (message, handling thread); checks that no two handlers ever overlap.

    ``("hold", event)`` waits (bounded) for ``event`` while holding the turn; ``"crash"``
    raises; ``("interrupt",)`` raises KeyboardInterrupt."""

    handles_in_caller: ClassVar[bool] = True

    def __init__(self, dropped: list[Any] | None = None) -> None:
        super().__init__()
        self.seen: list[tuple[Any, int]] = []
        self.dropped = [] if dropped is None else dropped
        self.busy = False
        self.overlaps = 0
        self.started_in: int | None = None

    def on_start(self) -> None:
        self.started_in = threading.get_ident()

    def on_receive(self, message: Any) -> Any:
        if self.busy:
            self.overlaps += 1
        self.busy = True
        try:
            if isinstance(message, tuple) and message[0] == "hold":
                message[1].wait(TIMEOUT)
            elif message == "crash":
                raise ValueError("crashed on purpose")
            elif message == ("interrupt",):
                raise KeyboardInterrupt
            self.seen.append((message, threading.get_ident()))
            if isinstance(message, tuple) and isinstance(message[-1], threading.Event):
                message[-1].set()
            return None
        finally:
            self.busy = False

    def on_dropped(self, message: Any) -> None:
        self.dropped.append(message)

    def report(self) -> dict[str, Any]:
        return {"seen": list(self.seen), "overlaps": self.overlaps, "thread": self.started_in}


class Plain(Recorder):
    handles_in_caller: ClassVar[bool] = False


def _report(ref: pykka.ActorRef[Any]) -> dict[str, Any]:
    result: dict[str, Any] = sup.ask(
        ref, pykka.messages.ProxyCall(("report",), (), {}), timeout=TIMEOUT
    )
    return result


def test_an_idle_actor_has_the_message_handled_in_the_senders_thread() -> None:
    ref = Recorder.start()
    try:
        sup.tell_inline(ref, "hello")
        report = _report(ref)
        assert report["seen"] == [("hello", threading.get_ident())]  # already handled, here
    finally:
        ref.stop(timeout=TIMEOUT)


def test_a_class_that_does_not_allow_it_gets_a_plain_tell() -> None:
    ref = Plain.start()
    try:
        sup.tell_inline(ref, "hello")
        report = _report(ref)
        assert report["seen"] == [("hello", report["thread"])]  # the actor's own thread
    finally:
        ref.stop(timeout=TIMEOUT)


def test_a_busy_actor_queues_the_message_behind_the_one_in_hand() -> None:
    ref = Recorder.start()
    release = threading.Event()
    try:
        ref.tell(("hold", release))  # the actor's thread holds its turn
        wait_until(lambda: ref.actor_inbox.empty(), TIMEOUT)
        sup.tell_inline(ref, "second")  # returns at once: queued, not handled here
        release.set()
        report = _report(ref)
        assert [m for m, _ in report["seen"]] == [("hold", release), "second"]
        assert report["seen"][1][1] == report["thread"]
    finally:
        release.set()
        ref.stop(timeout=TIMEOUT)


def test_a_senders_earlier_message_still_queued_is_handled_first() -> None:
    # FIFO per sender: the inbox is not empty, so the later message queues behind.
    ref = Recorder.start()
    release = threading.Event()
    try:
        ref.tell(("hold", release))
        ref.tell("first")
        sup.tell_inline(ref, "second")
        release.set()
        report = _report(ref)
        assert [m for m, _ in report["seen"]][1:] == ["first", "second"]
    finally:
        release.set()
        ref.stop(timeout=TIMEOUT)


def test_handlers_never_overlap_under_many_senders() -> None:
    # Senders as callers are: each sends, then waits for its message to be handled.
    ref = Recorder.start()
    senders, per_sender = 16, 200

    def send(i: int) -> None:
        for j in range(per_sender):
            done = threading.Event()
            if j % 50 == 0:
                ref.tell((i, j, done))
            else:
                sup.tell_inline(ref, (i, j, done))
            assert done.wait(TIMEOUT)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(senders)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(TIMEOUT)
        report = _report(ref)
        seen = [m[:2] for m, _ in report["seen"]]
        assert report["overlaps"] == 0
        assert sorted(seen) == sorted((i, j) for i in range(senders) for j in range(per_sender))
        by_actor = sum(t == report["thread"] for _, t in report["seen"])
        assert 0 < by_actor < len(seen)  # both ways were taken
    finally:
        ref.stop(timeout=TIMEOUT)


def test_a_crash_in_a_senders_thread_crashes_the_actor_before_its_next_message() -> None:
    ref = Recorder.start()
    downs: list[sup.Down] = []
    sup.monitor(ref, downs.append)
    sup.tell_inline(ref, "crash")  # the sender does not see the handler's exception
    reason = sup.wait_for_exit(ref, TIMEOUT)
    assert reason is not None
    assert reason.kind == "crash"
    assert isinstance(reason.exception, ValueError)
    assert [d.reason for d in downs] == [reason]
    with pytest.raises(pykka.ActorDeadError):
        sup.tell_inline(ref, "after")


def test_messages_queued_behind_an_inline_crash_are_dropped_not_handled() -> None:
    dropped: list[Any] = []
    ref = Recorder.start(dropped)
    sup.tell_inline(ref, "crash")  # handled here: the actor's wake-up to crash is queued
    try:
        ref.tell("late")  # queued behind the wake-up: the broken instance never handles it
        queued = True
    except pykka.ActorDeadError:
        queued = False  # it had crashed already
    assert sup.wait_for_exit(ref, TIMEOUT) is not None
    assert dropped == (["late"] if queued else [])


def test_a_keyboard_interrupt_goes_up_the_sender_and_crashes_the_actor() -> None:
    ref = Recorder.start()
    with pytest.raises(KeyboardInterrupt):
        sup.tell_inline(ref, ("interrupt",))
    reason = sup.wait_for_exit(ref, TIMEOUT)
    assert reason is not None
    assert reason.kind == "crash"


def test_a_stopping_actor_is_not_handled_inline() -> None:
    ref = Recorder.start()
    sup.request_exit(ref)
    assert sup.wait_for_exit(ref, TIMEOUT) == sup.SHUTDOWN
    with pytest.raises(pykka.ActorDeadError):
        sup.tell_inline(ref, "too late")
