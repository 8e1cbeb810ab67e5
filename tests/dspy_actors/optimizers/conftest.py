"""The optimizer tests' reflective task (dspy_actors/testing/reflective_task.py) on its
own SimLM, for GEPA and SIMBA alike."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from dspy_actors.lm import LM
from dspy_actors.testing.reflective_task import reflective_lm


@pytest.fixture
def task() -> Iterator[tuple[Any, LM]]:
    """The reflective task's SimLM and an LM on it, closed after the test."""
    with reflective_lm() as (sim, lm):
        yield sim, lm
