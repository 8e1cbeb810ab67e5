"""The runs' side of the runs/optimizers contract (runtime/_run_plan.py): a run drives any
``RunnableOptimizer``, not only ``dspy_actors.optimizers.Optimizer``. A hand-written one
here makes real LM calls through the app, checkpoints through the run's store, is resumed
by a second run with the same id, and stops when it reports ``"cancelled"``."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import dspy_actors as dsa
from dspy_actors.primitives.module import Module
from dspy_actors.runtime._events import RunProgress
from dspy_actors.runtime._run_plan import AttemptState, RunSetup
from dspy_actors.runtime.app import App, start
from dspy_actors.runtime.runs import RunCancelled
from dspy_actors.testing._polling import wait_until
from dspy_actors.testing._sim_clients import lm_on
from dspy_actors.testing.sim_lm import SimLM
from tests.dspy_actors.optimizers.task import dataset, responder

QUESTIONS = [str(e.question) for e in dataset(0, 3)]


@dataclass(frozen=True)
class Report:
    step: str
    restored: bool
    completed: int
    data: dict[str, Any]


@dataclass
class AskEach:
    """One step per question: ask the run's LM, keep the answer as a demo. Cancels
    itself (as an optimizer reports a cancelled evaluation) before ``cancel_at``."""

    cancel_at: int | None = None
    attempts: list[Attempt] = field(default_factory=list)

    def start_attempt(self, setup: RunSetup) -> Attempt:
        self.attempts.append(Attempt(self, setup))
        return self.attempts[-1]


class Attempt:
    def __init__(self, optimizer: AskEach, setup: RunSetup) -> None:
        self.optimizer = optimizer
        self.setup = setup
        self.answers: list[str] = []
        self.closed = threading.Event()

    def advance(self) -> AttemptState:
        index = len(self.answers)
        if index == self.optimizer.cancel_at:
            return "cancelled"
        name = f"ask/{index}"
        data = self.setup.checkpointer.load(name)
        restored = data is not None
        if data is None:
            predict = dsa.Predict("question -> answer")
            data = {"answer": str(predict(question=QUESTIONS[index]).answer)}
            self.setup.checkpointer.save(name, data)
        self.answers.append(data["answer"])
        self.setup.on_step(Report(name, restored, index + 1, data))
        return "done" if len(self.answers) == len(QUESTIONS) else "more"

    def result(self) -> Module:
        program = self.setup.student.deepcopy()
        program.predictors()[0].demos = [
            dsa.Example(question=q, answer=a) for q, a in zip(QUESTIONS, self.answers, strict=True)
        ]
        return program

    def close(self) -> None:
        self.closed.set()


@pytest.fixture
def sim() -> Iterator[SimLM]:
    with SimLM(responder) as server:
        yield server


@pytest.fixture
def app(sim: SimLM, tmp_path: Path) -> Iterator[App]:
    lm = lm_on(sim, "openai/sim-task")
    with start(lm=lm, data_dir=tmp_path / "data", lm_max_in_flight=2) as running:
        yield running
    lm.close()


def test_a_run_drives_any_runnable_optimizer_and_resumes_it(app: App, sim: SimLM) -> None:
    progress: list[RunProgress] = []
    app.events.subscribe("run.progress", progress.append)
    first = AskEach(cancel_at=2)
    run = app.optimize(first, dsa.Predict("question -> answer"), trainset=[], run_id="c1")
    with pytest.raises(RunCancelled):
        run.result(60)
    assert run.progress().steps_run == 2
    asked = sim.request_count
    assert asked == 2
    (attempt,) = first.attempts
    setup = attempt.setup
    assert setup.app is app
    assert setup.app_config is app.config
    assert setup.executor is None
    # The finished run's subtree is removed: its driver closes the attempt as it stops.
    wait_until(attempt.closed.is_set, timeout=30, what="the cancelled attempt closed")

    second = AskEach()
    program = app.optimize(
        second, dsa.Predict("question -> answer"), trainset=[], run_id="c1"
    ).result(60)
    # The two saved steps came back from the store: only the third question was asked.
    assert sim.request_count == asked + 1
    assert [d.question for d in program.predictors()[0].demos] == QUESTIONS
    wait_until(lambda: len(progress) >= 5, timeout=30, what="five run.progress events")
    assert [p.message for p in progress[2:5]] == [
        "restored ask/0",
        "restored ask/1",
        "finished ask/2",
    ]


def test_something_that_is_no_optimizer_is_refused_at_once(app: App) -> None:
    with pytest.raises(TypeError, match=r"app.optimize takes an optimizer .*not Predict"):
        app.optimize(dsa.Predict("q -> a"), dsa.Predict("q -> a"), trainset=[])  # type: ignore[arg-type]
    assert app.root.supervisor("runs").which_children() == []  # nothing was started
