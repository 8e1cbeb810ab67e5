"""A served composite's fan-out branches end with the app: a branch whose sub-module was
stopped under it fails at once with a clear error, instead of resending to a module that
will never come back until the resend limit (and outliving ``app.stop()`` meanwhile)."""

from __future__ import annotations

import queue
import threading
from typing import Any

import pytest

import dspy_actors as dsa
from dspy_actors.modules._fan_out import fan_out
from dspy_actors.runtime._calls import RESEND_LIMIT_SECONDS
from dspy_actors.testing import SimLM, wait_until
from dspy_actors.testing.sim_lm import SimRequest
from tests.dspy_actors.library.conftest import StartApp

BRANCHES = 3
WAIT_S = 60.0

# What each branch's sub-module call ended with (the served module is a copy of the one
# given to serve(), so the record lives outside it).
_branch_errors: queue.Queue[BaseException | None] = queue.Queue()


class FanOutOverPredict(dsa.Module):
    """Asks its predictor the same question from several branches at once."""

    def __init__(self) -> None:
        self.predict = dsa.Predict("question -> answer")

    def _branch(self, question: str) -> Any:
        try:
            result = self.predict(question=question)
        except BaseException as error:
            _branch_errors.put(error)
            raise
        _branch_errors.put(None)
        return result

    def forward(self, question: str) -> dsa.Prediction:
        outcomes = fan_out(
            [lambda: self._branch(question) for _ in range(BRANCHES)],
            max_workers=BRANCHES,
            timeout=WAIT_S,
        )
        return dsa.Prediction(answers=[o.value for o in outcomes])


def test_a_branch_resending_to_a_stopped_sub_module_fails_at_once_when_the_app_stops(
    sim_lm: SimLM, start_app: StartApp
) -> None:
    while not _branch_errors.empty():
        _branch_errors.get_nowait()
    gate = threading.Event()

    def held(_request: SimRequest) -> float:
        gate.wait(WAIT_S)
        return 0.0

    sim_lm.latency = held
    app = start_app()
    handle = app.serve("fan", FanOutOverPredict())
    caller = handle.submit(question="What is 2 + 2?")
    wait_until(
        lambda: sim_lm.request_count >= BRANCHES,
        timeout=WAIT_S,
        what=f"{BRANCHES} branch requests held at the LM",
    )
    # Stop the app with every branch's call in flight on the predictor: the predictor's
    # actor answers them "crashed, repeatable", and each branch sends its call again to a
    # predictor that is gone for good.
    stopper = threading.Thread(target=app.stop, name="test-app-stop")
    stopper.start()
    try:
        errors = [_branch_errors.get(timeout=WAIT_S) for _ in range(BRANCHES)]
    finally:
        gate.set()
        stopper.join(WAIT_S)
    assert not stopper.is_alive(), "app.stop() did not return"
    for error in errors:
        assert isinstance(error, dsa.ModuleCrashed), error
        # Not "stayed unavailable for 10.0 s": the branch gave up because the program
        # stopped, without waiting out the resend limit.
        assert "the program was stopped" in str(error), str(error)
        assert f"{RESEND_LIMIT_SECONDS:.1f} s" not in str(error)
    # The composite's own call ends with the app too.
    with pytest.raises((dsa.AppStopped, dsa.ModuleCrashed)):
        caller.result(timeout=WAIT_S)
