"""Calls in flight on a killed predictor are sent again (issue 20, item 6): a predictor's
LM calls have no side effects, so its callers resend what it dropped; a user-written
``forward`` is re-run only on the explicit ``idempotent=True``."""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import pytest

import dspy_actors as dsa
from dspy_actors.testing import (
    CallLedger,
    ChaosMonkey,
    SimLM,
    SimRequest,
    assert_all_accounted,
    assert_tree_healthy,
    lm_on,
)
from dspy_actors.testing._polling import wait_until
from tests.reliability.programs import StartApp

CALLS = 8
WAIT_S = 20.0

STEPS: list[tuple[str, Any, dict[str, Any]]] = [
    ("hint", dsa.Predict, {"signature": "question -> hint"}),
    ("answer", dsa.Predict, {"signature": "question, hint -> answer"}),
]


class HintThenAnswer(dsa.Module):
    """A composite: a user-written forward over two predictors."""

    def __init__(self) -> None:
        super().__init__()
        self.hint = dsa.Predict("question -> hint")
        self.answer = dsa.Predict("question, hint -> answer")

    def forward(self, question: str) -> Any:
        hint = self.hint(question=question).hint
        return self.answer(question=question, hint=hint)


def _is_answer_step(request: SimRequest) -> bool:
    return "answer" in json.dumps(request.messages)


class GatedSim:
    """A SimLM whose answer-step requests wait for ``gate`` (bounded), so calls are surely
    in flight on the answer actor when it is killed."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.sim = SimLM(latency=self._latency)

    def _latency(self, request: SimRequest) -> float:
        if _is_answer_step(request):
            self.gate.wait(WAIT_S)
        return 0.0

    def count(self, answer_step: bool) -> int:
        return sum(1 for r in self.sim.requests if _is_answer_step(r) == answer_step)


@pytest.fixture
def gated() -> Iterator[GatedSim]:
    gated = GatedSim()
    with gated.sim:
        try:
            yield gated
        finally:
            gated.gate.set()


def _send(handle: Any) -> list[Future[Any]]:
    return [handle.submit(question=f"q{i}") for i in range(CALLS)]


def _outcomes(futures: list[Future[Any]]) -> list[Any]:
    outcomes: list[Any] = []
    for future in futures:
        try:
            outcomes.append(future.result(timeout=WAIT_S))
        except Exception as error:
            outcomes.append(error)
    return outcomes


def _kill_once(app: Any, name: str) -> None:
    killed = ChaosMonkey(app).kill(f"{app.name}/{name}")
    assert killed == [f"{app.name}/{name}"], killed


def _kill_when_held_then_release(
    app: Any, gated: GatedSim, futures: list[Future[Any]], name: str, held: int = CALLS
) -> list[Any]:
    """Once ``held`` answer-step requests wait at the gate, kill ``name`` once, open the
    gate and return every call's outcome."""
    wait_until(
        lambda: gated.count(answer_step=True) >= held,
        timeout=WAIT_S,
        what=f"{held} answer-step requests held before killing {name}",
    )
    _kill_once(app, name)
    gated.gate.set()
    return _outcomes(futures)


def test_a_pipeline_step_killed_with_calls_in_flight_answers_them_all(
    start_app: StartApp, gated: GatedSim
) -> None:
    lm = lm_on(gated.sim)
    app = start_app(lm=lm)
    qa = app.program("qa", STEPS, timeout=30.0)  # not idempotent: the default
    futures = _send(qa)
    outcomes = _kill_when_held_then_release(app, gated, futures, "qa@v1/answer")
    assert all(isinstance(o, dsa.Prediction) for o in outcomes), outcomes
    assert gated.count(answer_step=True) >= 2 * CALLS  # each dropped call was sent again
    assert gated.count(answer_step=False) == CALLS  # to its step only: the first ran once
    lm.close()


def test_a_killed_sub_module_leaves_its_composite_serving(
    start_app: StartApp, gated: GatedSim
) -> None:
    lm = lm_on(gated.sim)
    app = start_app(lm=lm)
    qa = app.serve("qa", HintThenAnswer(), timeout=30.0)
    entry = app.registry.whereis(f"{app.name}/qa@v1/")
    futures = _send(qa)
    outcomes = _kill_when_held_then_release(app, gated, futures, "qa@v1/answer")
    assert all(isinstance(o, dsa.Prediction) for o in outcomes), outcomes
    assert gated.count(answer_step=True) >= 2 * CALLS
    assert gated.count(answer_step=False) == CALLS  # forward was not re-run
    # The composite's own actor lived through it: the same actor serves on.
    assert app.registry.whereis(f"{app.name}/qa@v1/") is entry
    assert qa.call(question="after").answer
    lm.close()


def test_a_killed_user_forward_is_retried_only_when_idempotent(
    start_app: StartApp, gated: GatedSim
) -> None:
    lm = lm_on(gated.sim)
    app = start_app(lm=lm)
    plain = app.serve("plain", HintThenAnswer(), timeout=30.0)
    futures = _send(plain)
    # The composite's own actor: its forwards are dropped.
    outcomes = _kill_when_held_then_release(app, gated, futures, "plain@v1/")
    assert all(isinstance(o, dsa.ModuleCrashed) for o in outcomes), outcomes
    assert not any(o.repeatable for o in outcomes)
    assert gated.count(answer_step=False) == CALLS  # nothing re-ran the user's forward

    gated.gate.clear()
    before = gated.count(answer_step=False)
    opted_in = app.serve("opted", HintThenAnswer(), timeout=30.0, idempotent=True)
    futures = _send(opted_in)
    outcomes = _kill_when_held_then_release(app, gated, futures, "opted@v1/", held=2 * CALLS)
    assert all(isinstance(o, dsa.Prediction) for o in outcomes), outcomes
    assert gated.count(answer_step=False) - before == 2 * CALLS  # forward ran again
    lm.close()


def test_an_idempotent_call_rides_out_crashes_until_its_deadline_not_a_count_of_three(
    start_app: StartApp, gated: GatedSim
) -> None:
    """The same calls are dropped by four kills of their composite's own actor, each kill
    once every call is back in flight; with the defaults every call is answered (a count
    of 3 crash retries answered 64% of such calls under bench/bench_kill_storm.py)."""
    lm = lm_on(gated.sim)
    app = start_app(lm=lm)
    qa = app.serve("qa", HintThenAnswer(), timeout=30.0, idempotent=True)
    # Few calls: each kill leaves their answer-step requests held at the gate, and the
    # LM's connections to the server are bounded.
    calls, kills = 4, 4
    futures = [qa.submit(question=f"q{i}") for i in range(calls)]
    for kill in range(1, kills + 1):
        wanted = kill * calls
        wait_until(
            lambda wanted=wanted: gated.count(answer_step=True) >= wanted,
            timeout=WAIT_S,
            what=f"the answer sub-module's requests before kill {kill}",
        )
        _kill_once(app, "qa@v1/")
    gated.gate.set()
    outcomes = _outcomes(futures)
    assert all(isinstance(o, dsa.Prediction) for o in outcomes), outcomes
    assert gated.count(answer_step=False) == (kills + 1) * calls  # forward re-ran each time
    lm.close()


def test_an_idempotent_call_rides_out_only_the_crashes_max_crash_retries_allows(
    start_app: StartApp, gated: GatedSim
) -> None:
    lm = lm_on(gated.sim)
    app = start_app(lm=lm)
    capped = app.serve(
        "capped", HintThenAnswer(), timeout=30.0, idempotent=True, max_crash_retries=0
    )
    futures = _send(capped)
    outcomes = _kill_when_held_then_release(app, gated, futures, "capped@v1/")
    assert all(isinstance(o, dsa.ModuleCrashed) for o in outcomes), outcomes
    assert gated.count(answer_step=False) == CALLS  # 0 retries: forward never ran again
    lm.close()


@pytest.mark.parametrize("kind", ["pipeline", "composite"])
def test_calls_under_a_kill_storm_are_all_answered_with_the_defaults(
    start_app: StartApp, sim_lm: SimLM, kind: str
) -> None:
    lm = lm_on(sim_lm)
    app = start_app(lm=lm, submit_threads=32)
    if kind == "pipeline":
        qa = app.program("qa", STEPS, timeout=30.0)
        pattern = f"{app.name}/qa@v1/*"  # both steps
    else:
        qa = app.serve("qa", HintThenAnswer(), timeout=30.0)
        pattern = f"{app.name}/qa@v1/?*"  # its sub-modules
    ledger = CallLedger(qa, hang_after_s=45.0)
    kills_wanted, min_calls, max_calls = 8, 200, 20_000
    with ChaosMonkey(app, seed=3) as monkey:
        run = monkey.kill_every(pattern, every_s=0.1, duration_s=None)
        # Calls go on until the monkey has killed enough (a condition, not a duration).
        inputs = (
            {"question": f"question {i}"}
            for i in itertools.takewhile(
                lambda i: i < max_calls and (i < min_calls or run.kills < kills_wanted),
                itertools.count(),
            )
        )
        ledger.run(inputs, concurrency=32)
        monkey.stop()
    assert run.error is None
    assert run.kills >= kills_wanted, f"the monkey killed only {run.kills} actors"
    assert_all_accounted(ledger, max_failed=0)
    assert_tree_healthy(app, within_s=15.0)
    lm.close()
