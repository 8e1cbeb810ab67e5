"""What the GEPA and SIMBA tests share on the reflective task (dspy_actors/testing/
reflective_task.py): the student program and its held-out score. (The ``task`` fixture
is in conftest.py.)"""

from __future__ import annotations

from typing import Any

import dspy_actors as dsa
from dspy_actors.evaluate import Evaluate
from dspy_actors.testing.reflective_task import BASE_INSTRUCTION, dataset, metric

# Held out from every optimizer's train and validation sets.
TEST = dataset(24, 12)


def student() -> dsa.Predict:
    """The program an optimizer starts from: the task's base instruction, no demos."""
    program = dsa.Predict("word -> answer")
    program.signature = program.signature.with_instructions(BASE_INSTRUCTION)
    return program


def score(program: Any) -> float:
    """``program``'s score (0-100) on the held-out ``TEST`` examples."""

    def plain(example: Any, prediction: Any, trace: Any = None) -> float:
        return float(metric(example, prediction).score)

    return Evaluate(devset=TEST, metric=plain, concurrency=4, progress=False)(program).score
