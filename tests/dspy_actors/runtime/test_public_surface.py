"""Every ``dsa.start`` option and every public name is exercised by some test, through the
public API; this file holds the end-to-end tests of the options nothing else used, and the
check that keeps the statement true as options and names are added."""

from __future__ import annotations

import inspect
import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import dspy_actors as dsa
import supervisors
from dspy_actors.evaluate import Evaluate, answer_exact_match
from dspy_actors.runtime._errors import RuntimeCallError
from dspy_actors.runtime._lm_pool import LMOverloaded
from dspy_actors.runtime.app import start
from dspy_actors.testing import HeldResponder, SimLM, SimRequest, default_responder, wait_until
from tests.dspy_actors.runtime.conftest import StartApp
from tests.dspy_actors.runtime.programs import Poisonable
from tests.supervisors.actors import Worker

TESTS_DIR = Path(__file__).resolve().parents[2]

# Named gaps: public names no test uses yet. The check below fails when one of these gets a
# test (take it off the list) and when a new name has none (write its test, or list it here
# with the reason).
NOT_YET_TESTED: dict[str, str] = {}


def _suite_text() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in TESTS_DIR.rglob("test_*.py"))


def test_every_start_option_and_public_name_is_named_by_a_test() -> None:
    text = _suite_text()
    options = [p for p in inspect.signature(start).parameters]
    untested_options = [o for o in options if not re.search(rf"\b{o}\s*=", text)]
    assert untested_options == [], f"dsa.start options no test passes: {untested_options}"
    # This file names the gaps itself: look for each name outside its list.
    own = Path(__file__).read_text(encoding="utf-8")
    text = text.replace(own, own.split("NOT_YET_TESTED")[0] + own.split("def _suite_text")[1])
    untested = {n for n in dsa.__all__ if not re.search(rf"\b{re.escape(n)}\b", text)}
    assert untested == set(NOT_YET_TESTED), (
        f"public names without a test: {sorted(untested - set(NOT_YET_TESTED))}; "
        f"listed as untested but now tested: {sorted(set(NOT_YET_TESTED) - untested)}"
    )


def test_rate_limit_paces_lm_requests_in_real_time(start_app: StartApp, sim: SimLM) -> None:
    """20 requests a second, a burst of 1: eleven calls cannot all be sent within 0.5 s
    (a lower bound: a busy machine only makes it later)."""
    app = start_app(rate_limit={"requests_per_second": 20.0, "burst": 1.0}, lm_max_in_flight=4)
    qa = app.serve("qa", dsa.Predict("question -> answer"))
    began = time.monotonic()
    futures = [qa.submit(question=f"q{i}") for i in range(11)]
    assert all(f.result(timeout=60.0).answer for f in futures)
    assert time.monotonic() - began >= 0.45
    assert sim.request_count == 11


def test_module_max_in_flight_refuses_a_call_past_it_with_overloaded(
    start_app: StartApp, sim: SimLM
) -> None:
    held = HeldResponder()
    sim.respond_with(held)
    app = start_app(module_max_in_flight=2)
    qa = app.serve("qa", dsa.Predict("question -> answer"))
    futures = [qa.submit(question=f"q{i}") for i in range(2)]
    held.wait_for_arrivals(2)
    try:
        with pytest.raises(dsa.Overloaded):
            qa.call(question="one too many")
    finally:
        held.open()
    assert all(f.result(timeout=30.0).answer for f in futures)
    assert held.arrived == 2  # the refused call never reached the LM


def test_lm_max_queue_fails_a_request_past_the_queue_at_once(
    start_app: StartApp, sim: SimLM
) -> None:
    """One LM slot busy, one request queued: the next fails fast, naming the bounds."""
    held = HeldResponder()
    sim.respond_with(held)
    app = start_app(lm_max_in_flight=1, lm_max_queue=1)
    qa = app.serve("qa", dsa.Predict("question -> answer"))
    busy = qa.submit(question="busy")
    held.wait_for_arrivals(1)
    queued = qa.submit(question="queued")
    try:
        with pytest.raises(LMOverloaded, match="lm_max_queue"):
            qa.call(question="past the queue")
    finally:
        held.open()
    assert busy.result(timeout=30.0).answer
    assert queued.result(timeout=30.0).answer


def test_stop_program_stops_its_actors_and_forgets_its_name(start_app: StartApp) -> None:
    app = start_app()
    qa = app.serve("qa", dsa.Predict("question -> answer"))
    assert qa.call(question="before").answer
    app.stop_program("qa")
    assert not [n for n in app.tree().walk() if n.id.startswith("qa@")]
    assert app.registry.whereis(f"{app.name}/qa@v1/") is None
    with pytest.raises(RuntimeCallError, match="qa"):
        qa.call_with({"question": "after"}, timeout=5.0)
    with pytest.raises(KeyError, match="no program named 'qa'"):
        app.stop_program("qa")


def test_root_period_bounds_the_window_of_the_roots_intensity(start_app: StartApp) -> None:
    """Intensity 1 in a 60 s window: the first crash of a root child is restarted, the
    second, well inside the window, stops the app, and its owner is told why."""
    exits: list[supervisors.ExitReason] = []
    app = start_app(root_intensity=1, root_period=60.0, on_exit=exits.append)
    first = app.root.child("events")
    assert first is not None
    supervisors.kill(first)
    wait_until(
        lambda: app.root.child("events") not in (None, first), timeout=30.0, what="a restart"
    )
    second = app.root.child("events")
    assert second is not None
    supervisors.kill(second)
    wait_until(lambda: exits, timeout=30.0, what="the app to exit")
    assert not app.root.is_alive
    assert "more than 1 restart(s) in 60 s" in str(exits[0]), exits


def test_registry_unregister_removes_a_name_or_only_one_ref() -> None:
    registry = supervisors.Registry(keys="duplicate")
    a, b = Worker.start(), Worker.start()
    try:
        registry.register("pool", a)
        registry.register("pool", b)
        registry.unregister("pool", a)
        assert registry.lookup("pool") is b
        registry.unregister("pool")
        assert registry.whereis("pool") is None
        registry.unregister("never registered")  # ignored, as documented
    finally:
        a.stop()
        b.stop()


def test_evaluate_on_a_served_program_scores_crashes_and_stragglers_as_failures(
    start_app: StartApp, sim: SimLM
) -> None:
    """Evaluate through a real served program: an input that crashes the module is an
    error (ModuleCrashed), one whose LM request is held past the timeout a straggler."""
    held_question = "What is 3 + 3?"

    def respond(request: SimRequest) -> Any:
        if held_question in request.last_user_text:
            released.wait(60.0)
        return default_responder(request)

    released = threading.Event()
    sim.respond_with(respond)
    app = start_app()
    # Idempotent: the crash also fails the other calls in flight on the actor, which are
    # then sent again; the poison input itself is quarantined after the threshold.
    svc = app.serve("svc", Poisonable(), idempotent=True)
    devset = [
        dsa.Example(question=q, answer=a).with_inputs("question")
        for q, a in [("What is 2 + 2?", "4"), ("poison", "-"), (held_question, "6")]
    ]
    try:
        result = Evaluate(
            devset=devset, metric=answer_exact_match, concurrency=3, timeout=5.0, progress=False
        )(svc)
    finally:
        released.set()
    by_question = {r.example.question: r for r in result.results}
    assert by_question["What is 2 + 2?"].score == 1.0
    assert isinstance(by_question["poison"].error, dsa.DeadLettered | dsa.ModuleCrashed)
    assert isinstance(by_question[held_question].error, dsa.DeadlineExceeded | TimeoutError)
    # The straggler ends at 5 s by the runtime deadline or by Evaluate's own timeout
    # (counted in timed_out too), whichever fires first.
    assert result.errors == 2
    assert result.score == 33.33  # rounded to two places, as DSPy
