"""wait_reply's two ways out besides an answer, and what their errors say."""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Any

import pytest

import supervisors
from dspy_actors.runtime.calls import send_call, wait_reply
from dspy_actors.runtime.context import capture
from dspy_actors.runtime.errors import DeadlineExceeded, ModuleUnavailable
from dspy_actors.runtime.messages import Call


class Silent(supervisors.SupervisedActor):
    """Takes calls and never answers them (as if its thread were stuck elsewhere)."""

    def __init__(self, taken: threading.Event) -> None:
        super().__init__()
        self.taken = taken

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Call):
            self.taken.set()
        return None


def test_an_actor_dying_unanswered_ends_the_wait_with_a_clean_unavailable_error() -> None:
    taken = threading.Event()
    ref = Silent.start(taken)
    ctx = capture(timeout=30.0)
    reply: Future[Any] = Future()
    ref.tell(Call({"q": 1}, ctx, reply))
    assert taken.wait(5.0)
    threading.Timer(0.1, supervisors.kill, args=(ref,)).start()
    with pytest.raises(ModuleUnavailable) as caught:
        wait_reply(reply, ref, ctx, "qa.answer", None)
    assert str(caught.value) == ("module 'qa.answer' is not available (restarting or stopped)")
    assert supervisors.wait_for_exit(ref, 5.0) is not None


def test_a_deadline_names_what_was_called() -> None:
    registry = supervisors.Registry()
    taken = threading.Event()
    ref = Silent.start(taken)
    registry.register("qa", ref)
    try:
        ctx = capture(timeout=0.2)
        reply, sent_to = send_call(registry, "qa", {"q": 1}, ctx)
        with pytest.raises(DeadlineExceeded, match=r"deadline exceeded at program 'qa' \(trace "):
            wait_reply(reply, sent_to, ctx, "qa", None, kind="program")
    finally:
        ref.stop(timeout=5.0)
