"""Learned state in the parameter store, restarts that keep it, and hot upgrades under load."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import supervisors
from dspy_actors.modules._chain_of_thought import ChainOfThought
from dspy_actors.modules._predict import Predict
from dspy_actors.primitives.example import Example
from dspy_actors.primitives.module import Module
from dspy_actors.primitives.prediction import Prediction
from dspy_actors.testing.sim_lm import SimLM, SimRequest
from dspy_actors.testing.sim_responder import default_responder
from tests.dspy_actors.runtime.conftest import StartApp
from tests.dspy_actors.runtime.programs import RAG

DEMO_QUESTION = "What colour is the sky on a clear day?"


def _with_demo(module: Any, path: str = "self") -> dict[str, Any]:
    """The program state of ``module`` with one demo added to the predictor at ``path``."""
    from dspy_actors.runtime.app import program_state

    state = program_state(module)
    state[path]["demos"] = [{"question": DEMO_QUESTION, "answer": "blue"}]
    return state


def _saw_demo(request: SimRequest) -> bool:
    return any(DEMO_QUESTION in str(m.get("content")) for m in request.messages)


def test_upgrade_with_state_switches_new_calls_and_shows_the_version(
    start_app: StartApp, sim: SimLM
) -> None:
    app = start_app()
    qa = app.serve("qa", Predict("question -> answer"))
    qa.call(question="before")
    version = qa.upgrade(_with_demo(Predict("question -> answer")))
    assert version == 2
    assert qa.version == 2
    qa.call(question="after")
    first, second = sim.requests
    assert not _saw_demo(first)
    assert _saw_demo(second)
    ids = [n.id for n in app.tree().walk()]
    assert "qa@v2" in ids
    assert "qa@v1" not in ids
    assert app.parameters.latest_version("qa") == 2


def test_a_restarted_actor_comes_back_optimized(start_app: StartApp, sim: SimLM) -> None:
    app = start_app()
    rag = app.serve("rag", RAG())
    rag.upgrade(_with_demo(RAG(), "answer.predict"))
    old = app.registry.lookup(f"{app.name}/rag@v2/answer")
    supervisors.kill(old)
    deadline = time.monotonic() + 10.0
    while app.registry.whereis(f"{app.name}/rag@v2/answer") in (None, old):
        assert time.monotonic() < deadline, "the answer actor was not restarted"
        time.sleep(0.005)
    rag.call(question="after the restart")
    assert _saw_demo(sim.requests[-1])


def test_a_new_process_serving_the_same_program_loads_its_learned_state(
    start_app: StartApp, sim: SimLM, tmp_path: Path
) -> None:
    data = tmp_path / "shared"
    first = start_app(data_dir=data)
    qa = first.serve("qa", ChainOfThought("question -> answer"))
    qa.upgrade(_with_demo(ChainOfThought("question -> answer"), "predict"))
    first.stop()
    second = start_app(data_dir=data)
    fresh = second.serve("qa", ChainOfThought("question -> answer"))
    fresh.call(question="remember?")
    assert _saw_demo(sim.requests[-1])


def test_hot_upgrade_under_load_fails_no_call(start_app: StartApp, sim: SimLM) -> None:
    def slowish(request: SimRequest) -> Any:
        time.sleep(0.02)
        return default_responder(request)

    sim.respond_with(slowish)
    app = start_app(lm_max_in_flight=16)
    rag = app.serve("rag", RAG())
    stop = threading.Event()
    errors: list[BaseException] = []
    answered = 0
    lock = threading.Lock()

    def caller() -> None:
        nonlocal answered
        while not stop.is_set():
            try:
                rag.call(question="steady")
                with lock:
                    answered += 1
            except BaseException as error:
                with lock:
                    errors.append(error)

    threads = [threading.Thread(target=caller) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    assert rag.upgrade(_with_demo(RAG(), "answer.predict")) == 2
    assert rag.upgrade(RAG()) == 3  # a new module instance works too
    time.sleep(0.3)
    stop.set()
    for t in threads:
        t.join(timeout=30.0)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert answered > 16
    assert any(_saw_demo(r) for r in sim.requests)


def test_pipeline_upgrade_with_state(start_app: StartApp, sim: SimLM) -> None:
    app = start_app()
    pipe = app.program("p", [("answer", Predict, {"signature": "question -> answer"})])
    pipe.upgrade({"answer": _with_demo(Predict("question -> answer"))["self"]})
    pipe.call(question="x")
    assert _saw_demo(sim.requests[-1])


class Holds(Module):
    """Step 1: holds the call with the question "hold" until released."""

    entered = threading.Event()
    release = threading.Event()

    def forward(self, question: str) -> Prediction:
        if question == "hold":
            Holds.entered.set()
            Holds.release.wait(10.0)
        return Prediction(held=question == "hold")


def test_a_pipeline_call_in_flight_finishes_its_steps_on_its_own_version(
    start_app: StartApp, sim: SimLM
) -> None:
    Holds.entered.clear()
    Holds.release.clear()
    app = start_app()
    pipe = app.program(
        "p", [("hold", Holds), ("answer", Predict, {"signature": "question -> answer"})]
    )
    held = pipe.submit(question="hold")
    assert Holds.entered.wait(10.0)
    upgrading = threading.Thread(
        target=pipe.upgrade, args=({"answer": _with_demo(Predict("question -> answer"))["self"]},)
    )
    upgrading.start()  # it drains: waits for the held call
    deadline = time.monotonic() + 10.0
    while pipe.version != 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert pipe.version == 2
    assert pipe.call(question="new").answer  # new calls run v2: its step 2 has the demo
    assert _saw_demo(sim.requests[-1])
    Holds.release.set()
    assert held.result(timeout=10.0).answer
    upgrading.join(timeout=10.0)
    assert not upgrading.is_alive()
    # The held call's step 2 ran on v1 (no demo), though v2 was current by then.
    (request,) = [r for r in sim.requests if "hold" in r.last_user_text]
    assert not _saw_demo(request)
    assert [n.id for n in app.tree().walk() if n.id.startswith("p@")] == ["p@v2"]


def test_demos_given_as_examples_survive_the_store(start_app: StartApp, sim: SimLM) -> None:
    module = Predict("question -> answer")
    module.demos = [Example(question=DEMO_QUESTION, answer="blue")]
    app = start_app()
    app.serve("qa", module).call(question="x")
    assert _saw_demo(sim.requests[-1])
