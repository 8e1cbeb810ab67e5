"""Call options cannot be mistaken for inputs; an upgrade's drain waits on the CallGate."""

from __future__ import annotations

import threading

import pytest

from dspy_actors.modules._predict import Predict
from dspy_actors.primitives.module import Module
from dspy_actors.primitives.prediction import Prediction
from dspy_actors.runtime._gate import CallGate
from tests.dspy_actors.runtime.conftest import StartApp


class TakesTimeout(Module):
    def forward(self, timeout: float) -> Prediction:
        return Prediction(answer=f"took {timeout}")


def test_an_option_passed_as_an_input_is_a_clear_error(start_app: StartApp) -> None:
    app = start_app()
    qa = app.serve("qa", Predict("question -> answer"))
    with pytest.raises(TypeError, match=r"qa\.call_with\(\{\.\.\.inputs\.\.\.\}, timeout=0\.1\)"):
        qa.call(question="q", timeout=0.1)
    with pytest.raises(TypeError, match="trace_id"):
        qa.submit(question="q", trace_id="t-1")


def test_an_input_named_like_an_option_is_still_an_input(start_app: StartApp) -> None:
    app = start_app()
    program = app.serve("t", TakesTimeout())
    assert program.call(timeout=3).answer == "took 3"
    assert program.call_with({"timeout": 4}, timeout=30.0).answer == "took 4"


def test_wait_drained_returns_when_the_last_call_of_the_version_leaves() -> None:
    gate = CallGate(limit=10)
    assert [gate.enter(1), gate.enter(1), gate.enter(2)] == [True, True, True]
    drained: list[bool] = []
    waiter = threading.Thread(target=lambda: drained.append(gate.wait_drained(1, 30.0)))
    waiter.start()
    gate.leave(1)
    gate.leave(1)
    waiter.join(timeout=30.0)
    assert drained == [True]
    assert gate.in_flight(2) == 1
    assert gate.wait_drained(2, 0.0) is False  # still in flight: not drained, no wait
