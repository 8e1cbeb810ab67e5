"""A non-idempotent pipeline must not run a step twice because a *later* step was restarting.

ProgramHandle retries ModuleUnavailable as "the call never reached a module". A pipeline
answers ModuleUnavailable also when its second step is restarting, after its first step
already ran; the handle then re-runs the whole pipeline, first step included.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import dspy_actors as dsa
import supervisors
from dspy_actors.runtime.app import App
from tests.reliability.programs import StartApp


class SideEffect(dsa.Module):
    """Step 1: counts its runs (think: sends an e-mail); on the first run it kills step 2
    and makes step 2's restart slow, so step 2 is unavailable when the pipeline gets there."""

    runs = 0
    app: App | None = None
    lock = threading.Lock()

    def forward(self, question: str) -> dsa.Prediction:
        with SideEffect.lock:
            SideEffect.runs += 1
            first = SideEffect.runs == 1
        if first and SideEffect.app is not None:
            SlowStart.slow = True
            ref = SideEffect.app.registry.lookup(f"{SideEffect.app.name}/qa@v1/second")
            supervisors.kill(ref)
            supervisors.wait_for_exit(ref, 5.0)
        return dsa.Prediction(draft=f"draft for {question}")


class SlowStart(dsa.Module):
    """Step 2: its restart takes 0.5 s while ``slow`` is set."""

    slow = False

    def forward(self, question: str, draft: str) -> dsa.Prediction:
        return dsa.Prediction(answer=draft)

    def deepcopy(self) -> Any:
        if SlowStart.slow:
            time.sleep(0.5)
        return super().deepcopy()


def test_a_restarting_second_step_does_not_rerun_the_first(start_app: StartApp) -> None:
    app = start_app()
    SideEffect.runs, SideEffect.app, SlowStart.slow = 0, app, False
    try:
        qa = app.program("qa", [("first", SideEffect()), ("second", SlowStart())])
        try:
            qa.call_with({"question": "once"}, timeout=10.0)
        except (dsa.ModuleUnavailable, dsa.ModuleCrashed):
            pass  # failing clearly is fine; running the side effect twice is not
        assert SideEffect.runs == 1
    finally:
        SideEffect.app, SlowStart.slow = None, False
