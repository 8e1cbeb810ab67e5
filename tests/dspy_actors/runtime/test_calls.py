"""wait_reply's two ways out besides an answer, and what their errors say."""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Any

import pytest
from pykka._envelope import Envelope

import supervisors
from dspy_actors.runtime._calls import send_call, wait_reply
from dspy_actors.runtime._context import capture
from dspy_actors.runtime._errors import DeadlineExceeded, ModuleUnavailable
from dspy_actors.runtime._futures import reject
from dspy_actors.runtime._messages import Call


class Silent(supervisors.SupervisedActor):
    """Takes calls and never answers them; ("hold", event) keeps its thread until set.
    Calls it never took are answered as a module actor answers them (on_dropped)."""

    def __init__(self, taken: threading.Event) -> None:
        super().__init__()
        self.taken = taken

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Call):
            self.taken.set()
        elif isinstance(message, tuple) and message[0] == "hold":
            message[1].wait(10.0)
        return None

    def on_dropped(self, message: Any) -> None:
        if isinstance(message, Call):
            reject(message.reply, ModuleUnavailable("qa.answer"))


def test_a_call_queued_behind_an_actor_that_dies_ends_with_a_clean_unavailable_error() -> None:
    registry = supervisors.Registry()
    ref = Silent.start(threading.Event())
    registry.register("qa", ref)
    release = threading.Event()
    ref.tell(("hold", release))
    ctx = capture(timeout=30.0)
    reply = send_call(registry, "qa", {"q": 1}, ctx)
    supervisors.kill(ref)  # acted on after the message in hand: the call stays queued
    release.set()
    with pytest.raises(ModuleUnavailable) as caught:
        wait_reply(reply, ctx, "qa.answer", None)
    assert str(caught.value) == "module 'qa.answer' is not available (restarting or stopped)"
    assert supervisors.wait_for_exit(ref, 5.0) is not None


def test_a_call_put_after_the_actor_drained_its_inbox_is_answered_by_its_sender() -> None:
    """The race send_call closes: the actor is stopped and drained, then the call lands.
    Whoever drains (the sender, the actor's own last look, an ask) hands the call to the
    actor's on_dropped, which answers it."""
    ref = Silent.start(threading.Event())
    ref.stop(timeout=5.0)
    assert supervisors.wait_for_exit(ref, 5.0) is not None
    ctx = capture(timeout=30.0)
    reply: Future[Any] = Future()
    ref.actor_inbox.put(Envelope(Call({"q": 1}, ctx, reply)))  # past tell's alive check
    supervisors.drain_stranded(ref)
    with pytest.raises(ModuleUnavailable, match=r"'qa\.answer' is not available"):
        wait_reply(reply, ctx, "qa.answer", 5.0)


def test_a_deadline_names_what_was_called() -> None:
    registry = supervisors.Registry()
    taken = threading.Event()
    ref = Silent.start(taken)
    registry.register("qa", ref)
    try:
        ctx = capture(timeout=0.2)
        reply = send_call(registry, "qa", {"q": 1}, ctx)
        with pytest.raises(DeadlineExceeded, match=r"deadline exceeded at program 'qa' \(trace "):
            wait_reply(reply, ctx, "qa", None, kind="program")
    finally:
        ref.stop(timeout=5.0)
