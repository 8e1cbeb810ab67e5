"""COPRO, MIPROv2, KNNFewShot and Ensemble improve the reverse-a-word task, per seed."""

from __future__ import annotations

from typing import Any

import dspy_actors as dsa
from dspy_actors.evaluate import Evaluate
from dspy_actors.optimizers import (
    COPRO,
    Ensemble,
    KNNFewShot,
    LabeledFewShot,
    MemoryCheckpointer,
    MIPROv2,
    majority,
)
from tests.dspy_actors.optimizers.task import MAGIC, WORDS, dataset, metric, task_lm

TRAIN = dataset(0, 8)
DEV = dataset(12, 6)


def score(program: Any) -> float:
    return Evaluate(devset=DEV, metric=metric, concurrency=4, progress=False)(program).score


def test_copro_finds_an_instruction_that_works() -> None:
    with task_lm() as (sim, lm):
        student = dsa.Predict("question -> answer")
        student.lm = lm
        optimizer = COPRO(metric, prompt_model=lm, breadth=3, depth=2)
        ckpt = MemoryCheckpointer()
        compiled = optimizer.compile(student, trainset=TRAIN, checkpointer=ckpt)
        instructions = compiled.predictors()[0].signature.instructions
        assert MAGIC in instructions
        assert student.signature.instructions != instructions
        assert score(student) == 0.0
        assert score(compiled) == 100.0
        assert set(ckpt.steps) == {
            "self/depth0/propose", "self/depth0/eval", "self/depth1/propose", "self/depth1/eval",
        }  # fmt: skip
        calls = sim.request_count
        again = optimizer.compile(student, trainset=TRAIN, checkpointer=ckpt)
        assert sim.request_count == calls
        assert again.dump_state() == compiled.dump_state()


def test_mipro_searches_instructions_and_demos_on_minibatches() -> None:
    train = dataset(0, 10)
    val = dataset(10, 12)
    with task_lm() as (_sim, lm):
        student = dsa.Predict("question -> answer")
        student.lm = lm
        optimizer = MIPROv2(
            metric, prompt_model=lm, num_candidates=3, max_bootstrapped_demos=2,
            max_labeled_demos=2, num_trials=5, minibatch_size=4, minibatch_full_eval_steps=2,
        )  # fmt: skip
        ckpt = MemoryCheckpointer()
        compiled = optimizer.compile(student, trainset=train, valset=val, checkpointer=ckpt)
        again = optimizer.compile(student, trainset=train, valset=val, seed=9)
        trials = [k for k in ckpt.steps if k.startswith("trial/")]
        assert len(trials) == 5
        assert all(len(ckpt.steps[t]["batch"]) == 4 for t in trials)
        assert ckpt.steps["full_eval/default"]["score"] == 0.0
        assert any(k.startswith("full_eval/") and k != "full_eval/default" for k in ckpt.steps)
        assert compiled.dump_state() == again.dump_state()
        assert score(student) == 0.0
        assert score(compiled) == 100.0


def _bag_of_letters(texts: list[str]) -> list[list[float]]:
    return [[float(t.lower().count(c)) for c in "abcdefghijklmnopqrstuvwxyz"] for t in texts]


def test_knn_few_shot_bootstraps_from_the_nearest_examples() -> None:
    with task_lm() as (_sim, lm):
        student = dsa.Predict("question -> answer")
        student.lm = lm
        knn = KNNFewShot(3, TRAIN, _bag_of_letters, metric=metric, max_bootstrapped_demos=1)
        compiled = knn.compile(student)
        near = compiled.neighbors(question=f"Reverse the word: {WORDS[3]}")  # type: ignore[attr-defined]
        assert near[0] == TRAIN[3]
        assert len(near) == 3
        assert score(student) == 0.0
        assert score(compiled) == 100.0


def test_ensemble_takes_the_majority_answer() -> None:
    with task_lm() as (_sim, lm):
        zero = dsa.Predict("question -> answer")
        zero.lm = lm
        few = LabeledFewShot(k=2).compile(zero, trainset=TRAIN)
        ensemble = Ensemble(reduce_fn=majority).compile([zero, few, few])
        assert score(ensemble) == 100.0
        sampled = Ensemble(reduce_fn=majority, size=1, deterministic=True).compile([zero, few])
        assert score(sampled) == 0.0
        raw = Ensemble().compile([zero, few])(question="Reverse the word: abc")
        assert [p.answer for p in raw] == ["unknown", "cba"]
