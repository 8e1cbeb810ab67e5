"""MIPROv2(auto="light"|"medium"|"heavy"): DSPy's budget rules, against SimLM."""

from __future__ import annotations

import pytest

import dspy_actors as dsa
from dspy_actors.optimizers import MemoryCheckpointer, MIPROv2
from tests.dspy_actors.optimizers.task import dataset, metric, task_lm


def test_auto_light_sets_candidates_trials_and_valset_by_dspys_rules() -> None:
    train, val = dataset(0, 8), dataset(8, 4)
    with task_lm() as (_sim, lm):
        student = dsa.Predict("question -> answer")
        student.lm = lm
        optimizer = MIPROv2(metric, prompt_model=lm, auto="light", max_bootstrapped_demos=1)
        ckpt = MemoryCheckpointer()
        optimizer.compile(student, trainset=train, valset=val, checkpointer=ckpt)
    steps = set(ckpt.steps)
    # light: n = 6 demo sets; one predictor with demos is 2 variables, so
    # max(2 * 2 * log2(6), 1.5 * 6) = 10 trials; 4 validation examples: no minibatches.
    assert len([k for k in steps if k.startswith("demos/")]) == 6
    assert len([k for k in steps if k.startswith("trial/")]) == 10
    assert all(ckpt.steps[k]["batch"] is None for k in steps if k.startswith("trial/"))
    # Half as many instruction candidates as demo sets (3: the current one and 2 proposed).
    assert len(ckpt.steps["instructions/self"]["instructions"]) <= 3


def test_auto_refuses_bad_values_and_hand_set_budgets_clearly() -> None:
    with pytest.raises(ValueError, match="auto is one of 'light', 'medium', 'heavy'"):
        MIPROv2(metric, auto="quick")
    with pytest.raises(ValueError, match="pass auto=None to set them yourself"):
        MIPROv2(metric, auto="medium", num_trials=3)
