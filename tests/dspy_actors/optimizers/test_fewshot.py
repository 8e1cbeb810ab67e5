"""LabeledFewShot, BootstrapFewShot and random search improve the reverse-a-word task."""

from __future__ import annotations

from typing import Any

import dspy_actors as dsa
from dspy_actors.evaluate import Evaluate
from dspy_actors.optimizers import (
    BootstrapFewShot,
    BootstrapFewShotWithRandomSearch,
    LabeledFewShot,
    MemoryCheckpointer,
)
from tests.dspy_actors.optimizers.task import dataset, metric, task_lm

TRAIN = dataset(0, 8)
DEV = dataset(12, 6)


def score(program: Any) -> float:
    return Evaluate(devset=DEV, metric=metric, concurrency=4, progress=False)(program).score


def test_labeled_few_shot_is_seeded_and_improves() -> None:
    with task_lm() as (_sim, lm):
        student = dsa.Predict("question -> answer")
        student.lm = lm
        a = LabeledFewShot(k=3).compile(student, trainset=TRAIN, seed=1)
        b = LabeledFewShot(k=3).compile(student, trainset=TRAIN, seed=1)
        c = LabeledFewShot(k=3).compile(student, trainset=TRAIN, seed=2)
        assert a.dump_state() == b.dump_state() != c.dump_state()
        assert len(a.predictors()[0].demos) == 3
        assert student.demos == []
        assert score(student) == 0.0
        assert score(a) == 100.0


def test_bootstrap_few_shot_keeps_successful_traces() -> None:
    with task_lm() as (sim, lm):
        student = dsa.ChainOfThought("question -> answer")
        student.set_lm(lm)
        optimizer = BootstrapFewShot(metric, max_bootstrapped_demos=2, max_labeled_demos=3)
        compiled = optimizer.compile(student, trainset=TRAIN)
        again = optimizer.compile(student, trainset=TRAIN)
        demos = compiled.predictors()[0].demos
        assert compiled.dump_state() == again.dump_state()
        # Two bootstrapped demos (with the teacher's reasoning) then one labeled one.
        assert [("reasoning" in d) for d in demos] == [True, True, False]
        assert demos[0]["answer"] == TRAIN[0].answer
        assert score(student) == 0.0
        assert score(compiled) == 100.0
        assert sim.request_count > 0


def test_bootstrap_with_zero_labeled_demos_cannot_bootstrap_a_blind_teacher() -> None:
    with task_lm() as (_sim, lm):
        student = dsa.Predict("question -> answer")
        student.lm = lm
        compiled = BootstrapFewShot(metric, max_labeled_demos=0).compile(student, trainset=TRAIN)
    assert compiled.predictors()[0].demos == []


def test_random_search_picks_the_best_candidate_and_resumes_without_calls() -> None:
    with task_lm() as (sim, lm):
        student = dsa.Predict("question -> answer")
        student.lm = lm
        optimizer = BootstrapFewShotWithRandomSearch(
            metric, max_bootstrapped_demos=2, max_labeled_demos=2, num_candidate_programs=2
        )
        ckpt = MemoryCheckpointer()
        steps: list[tuple[str, bool]] = []
        compiled = optimizer.compile(
            student, trainset=TRAIN, valset=DEV, checkpointer=ckpt,
            on_step=lambda e: steps.append((e.step, e.restored)),
        )  # fmt: skip
        assert [s for s, _ in steps] == [f"candidate/{i}" for i in range(-3, 2)]
        assert ckpt.steps["candidate/-3"]["score"] == 0.0
        assert score(compiled) == 100.0
        calls = sim.request_count
        resumed = optimizer.compile(student, trainset=TRAIN, valset=DEV, checkpointer=ckpt)
        assert sim.request_count == calls  # every step restored
        assert resumed.dump_state() == compiled.dump_state()
