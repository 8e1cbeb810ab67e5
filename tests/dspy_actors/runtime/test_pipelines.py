"""Programs (``app.program``): the caller drives each call through the steps' actors."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

import supervisors
from dspy_actors.modules._predict import Predict
from dspy_actors.primitives.module import Module
from dspy_actors.primitives.prediction import Prediction
from dspy_actors.runtime import _calls as calls
from dspy_actors.runtime import _pipeline as pipeline
from dspy_actors.runtime._errors import DeadlineExceeded, ModuleCrashed, ModuleUnavailable
from dspy_actors.testing._held_responder import slow_responder
from dspy_actors.testing._polling import wait_until
from dspy_actors.testing.sim_lm import SimLM, SimRequest
from dspy_actors.testing.sim_responder import default_responder
from tests.dspy_actors.runtime.conftest import StartApp
from tests.dspy_actors.runtime.programs import RAG, Retriever

ANSWER = ("answer", Predict, {"signature": "context: list[str], question -> answer"})


class CountingRetriever(Module):
    """Step 1 with a side effect: counts its runs."""

    runs = 0
    lock = threading.Lock()

    def forward(self, question: str) -> Prediction:
        with CountingRetriever.lock:
            CountingRetriever.runs += 1
        return Prediction(context=[f"passage about {question}"])


class CrashesOnce(Module):
    """Step 2: its first call crashes (a bug, not a bad input); it answers the others."""

    crashes = 0
    lock = threading.Lock()

    def forward(self, question: str, context: list[str]) -> Prediction:
        with CrashesOnce.lock:
            first = CrashesOnce.crashes == 0
            if first:
                CrashesOnce.crashes += 1
        if first:
            raise RuntimeError("step 2 fell over")
        return Prediction(answer=f"{len(context)} passage(s) for {question}")


class NotAPrediction(Module):
    def forward(self, question: str) -> Any:
        return 42


def test_a_programs_subtree_is_only_its_steps(start_app: StartApp) -> None:
    app = start_app()
    qa = app.program("qa", [("retrieve", Retriever, {"k": 2}), ANSWER])
    one = app.program("one", [("answer", Predict, {"signature": "question -> answer"})])
    nested = app.program(
        "nested", [("rag", RAG), ("check", Predict, {"signature": "answer -> ok"})]
    )
    assert qa.call(question="q").answer
    assert one.call(question="q").answer
    assert nested.call(question="q").ok
    nodes = {n.id: n for n in app.tree().walk()}
    assert [(c.id, c.kind) for c in nodes["qa@v1"].children] == [
        ("retrieve", "worker"),
        ("answer", "worker"),
    ]
    assert [(c.id, c.kind) for c in nodes["one@v1"].children] == [("answer", "worker")]
    rag, check = nodes["nested@v1"].children
    assert (rag.id, rag.kind, check.id) == ("rag", "supervisor", "check")
    assert [c.id for c in rag.children] == ["retrieve", "answer", "forward"]
    # Nothing is registered between the caller and the steps.
    assert app.registry.whereis(f"{app.name}/qa@v1/") is None
    assert app.registry.whereis(f"{app.name}/qa@v1/answer") is not None


def test_a_step_answering_no_prediction_is_a_type_error(start_app: StartApp) -> None:
    app = start_app()
    first = app.program("first", [("bad", NotAPrediction), ANSWER])
    last = app.program("last", [("retrieve", Retriever), ("bad", NotAPrediction)])
    for handle in (first, last):
        with pytest.raises(TypeError, match="must return a Prediction or a mapping"):
            handle.call(question="q")


def test_every_step_gets_the_calls_context(start_app: StartApp, sim: SimLM) -> None:
    app = start_app()
    starts: list[Any] = []
    app.subscribe("module.start", starts.append)
    qa = app.program("qa", [("retrieve", Retriever, {"k": 1}), ANSWER])
    qa.call_with({"question": "traced"}, trace_id="trace-42")
    assert app.events.flush(5.0)
    assert sorted(e.module_path for e in starts if e.trace_id == "trace-42") == [
        "qa.answer",
        "qa.retrieve",
    ]
    # The deadline bounds the later step too, and the error names it. The LM answers only
    # once the test is over, so nothing but the deadline can end the call.
    released = threading.Event()

    def held(request: SimRequest) -> Any:
        released.wait(30.0)
        return default_responder(request)

    sim.respond_with(held)
    began = time.monotonic()
    try:
        with pytest.raises(DeadlineExceeded, match=r"qa\.answer"):
            qa.call_with({"question": "slow"}, timeout=0.3)
        assert time.monotonic() - began < 20.0  # the 0.3 s deadline, not the 30 s hold
    finally:
        released.set()


def test_a_crash_in_step_two_names_it_and_an_idempotent_call_retries_from_step_one(
    start_app: StartApp,
) -> None:
    app = start_app()
    steps = [("retrieve", CountingRetriever), ("flaky", CrashesOnce)]
    CountingRetriever.runs, CrashesOnce.crashes = 0, 0
    plain = app.program("plain", steps)
    with pytest.raises(ModuleCrashed, match="step 2 fell over") as crashed:
        plain.call(question="q")
    assert crashed.value.module_path == "plain.flaky"
    assert CountingRetriever.runs == 1
    assert plain.call(question="q").answer == "1 passage(s) for q"

    CountingRetriever.runs, CrashesOnce.crashes = 0, 0
    retried = app.program("retried", steps, idempotent=True)
    assert retried.call(question="q").answer == "1 passage(s) for q"
    assert CountingRetriever.runs == 2  # the whole program again, from step 1


class KillsStepTwo(Module):
    """Step 1: kills step 2's actor; its starts are held (``SlowRestart.slow``) until
    ``SlowRestart.release`` is set."""

    runs = 0
    target: Any = None

    def forward(self, question: str) -> Prediction:
        KillsStepTwo.runs += 1
        if KillsStepTwo.target is not None:
            ref, KillsStepTwo.target = KillsStepTwo.target, None
            SlowRestart.slow = True
            supervisors.kill(ref)
            supervisors.wait_for_exit(ref, 5.0)
        return Prediction(draft=question)


class SlowRestart(Module):
    slow = False
    held = threading.Event()  # a start is being held
    release = threading.Event()

    def forward(self, draft: str) -> Prediction:
        return Prediction(answer=draft)

    def deepcopy(self) -> Any:
        if SlowRestart.slow:  # every start waits while the flag is up
            SlowRestart.held.set()
            SlowRestart.release.wait(60.0)
        return super().deepcopy()


def test_a_step_restarting_within_the_limit_answers_without_rerunning_step_one(
    start_app: StartApp,
) -> None:
    """Step 1 (a side effect: think of an e-mail sent) kills step 2, whose restart is held
    until it has begun: the call is answered once step 2 is back, and the handle does
    not re-run step 1 (not idempotent: the default)."""
    app = start_app()
    KillsStepTwo.runs = 0
    SlowRestart.held.clear()
    SlowRestart.release.clear()
    p = app.program("p", [("first", KillsStepTwo), ("second", SlowRestart)])
    KillsStepTwo.target = app.registry.lookup(f"{app.name}/p@v1/second")

    def release_once_held() -> None:
        if SlowRestart.held.wait(60.0):
            SlowRestart.slow = False
            SlowRestart.release.set()

    releaser = threading.Thread(target=release_once_held, name="release-step-two")
    releaser.start()
    try:
        assert p.call(question="once").answer == "once"
        assert SlowRestart.held.is_set(), "step 2's restart was never held"
    finally:
        SlowRestart.slow = False
        SlowRestart.held.set()
        SlowRestart.release.set()
        releaser.join(60.0)
    assert KillsStepTwo.runs == 1


def test_a_step_unavailable_past_the_limit_fails_naming_it_without_rerunning_step_one(
    start_app: StartApp,
) -> None:
    """At the default limit: every start of step 2 is held until the call has failed, so
    the step cannot come back and the resend limit, not a race, decides. The limit is
    twice the start timeout, so the call outlived a start that timed out and was retried
    (a restart slower than the start timeout alone never fails a call)."""
    assert calls.RESEND_LIMIT_SECONDS == 2 * calls.MODULE_START_TIMEOUT_SECONDS
    app = start_app()
    KillsStepTwo.runs = 0
    SlowRestart.release.clear()
    p = app.program("p", [("first", KillsStepTwo), ("second", SlowRestart)])
    KillsStepTwo.target = app.registry.lookup(f"{app.name}/p@v1/second")
    try:
        began = time.monotonic()
        with pytest.raises(ModuleCrashed, match="stayed unavailable") as crashed:
            p.call(question="once")
        assert time.monotonic() - began >= calls.RESEND_LIMIT_SECONDS * 0.9
    finally:
        SlowRestart.slow = False
        SlowRestart.release.set()
    assert crashed.value.module_path == "p.second"
    assert KillsStepTwo.runs == 1
    # Once it is back, calls go through.
    wait_until(
        lambda: app.registry.whereis(f"{app.name}/p@v1/second") is not None,
        timeout=30.0,
        what="step 2 to come back",
    )
    assert p.call(question="later").answer == "later"
    assert KillsStepTwo.runs == 2


@pytest.mark.parametrize("idempotent", [False, True])
def test_many_callers_while_a_step_is_killed_all_get_an_answer_or_a_clear_error(
    start_app: StartApp, sim: SimLM, idempotent: bool
) -> None:
    sim.respond_with(slow_responder(0.05))
    app = start_app(lm_max_in_flight=16)
    qa = app.program(
        "qa", [("retrieve", Retriever, {"k": 2}), ANSWER], idempotent=idempotent, timeout=30.0
    )
    outcomes: list[Any] = []
    lock = threading.Lock()

    def caller(n: int) -> None:
        for i in range(10):
            try:
                result: Any = qa.call(question=f"caller {n} call {i}")
            except Exception as error:
                result = error
            with lock:
                outcomes.append(result)

    threads = [threading.Thread(target=caller, args=(n,), daemon=True) for n in range(32)]
    for t in threads:
        t.start()
    # Each kill lands on a live step 2 while an LM request of its is in flight (the server
    # has seen a new request since the last kill), so it always hits calls, however busy
    # the machine is.
    kills = 0
    for _ in range(3):
        seen = sim.request_count
        ref = wait_until(
            lambda seen=seen: (
                sim.request_count > seen and app.registry.whereis(f"{app.name}/qa@v1/answer")
            ),
            timeout=30.0,
            what="step 2 running with a request in flight",
        )
        supervisors.kill(ref)
        kills += 1
    for t in threads:
        t.join(timeout=60.0)
    assert not any(t.is_alive() for t in threads), "a call hung"
    assert kills == 3
    assert len(outcomes) == 320
    failed = [o for o in outcomes if isinstance(o, BaseException)]
    errors = [e for e in failed if isinstance(e, ModuleCrashed | ModuleUnavailable)]
    assert errors == failed, failed[:3]  # only the runtime's clear errors
    assert all(e.module_path == "qa.answer" for e in errors), errors[:3]
    # Either way: the killed step is a predictor, so the calls it dropped are sent to it
    # again (safe to repeat); idempotent only matters for a user-written forward.
    assert errors == []
    assert all(o.answer for o in outcomes if not isinstance(o, BaseException))
    # The step came back: the next call is answered.
    assert qa.call(question="after").answer


def test_a_call_whose_version_an_upgrade_stopped_between_steps_fails_at_once(
    start_app: StartApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The old version is stopped (drain timeout) after step 1 answered and before the
    call reaches step 2: step 2 will never come back, so no 5 s of resending."""
    app = start_app()
    p = app.program(
        "p",
        [
            ("retrieve", Retriever, {"k": 1}),
            ("answer", Predict, {"signature": "context: list[str], question -> answer"}),
        ],
    )
    between_steps, retired = threading.Event(), threading.Event()
    original = pipeline.resending_plan

    def held_before_step_two(*args: Any, **kwargs: Any) -> Any:
        between_steps.set()
        retired.wait(10)
        return (yield from original(*args, **kwargs))

    # A resend limit far above any scheduling delay: failing "at once" must mean not
    # resending at all, which a busy machine cannot blur.
    monkeypatch.setattr(calls, "RESEND_LIMIT_SECONDS", 60.0)
    monkeypatch.setattr(pipeline, "resending_plan", held_before_step_two)
    future = app.executor.submit(p.call, question="q")
    assert between_steps.wait(10)
    assert p.upgrade({}, drain_timeout=0.05) == 2
    monkeypatch.setattr(pipeline, "resending_plan", original)
    retired.set()
    started = time.monotonic()
    with pytest.raises(ModuleCrashed, match="version 1 was stopped by an upgrade") as crashed:
        future.result(timeout=10)
    assert crashed.value.module_path == "p.answer"
    assert time.monotonic() - started < calls.RESEND_LIMIT_SECONDS / 2
    assert p.call(question="on v2").answer
