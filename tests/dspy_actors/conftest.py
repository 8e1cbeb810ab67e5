"""Fixtures shared by the dspy_actors tests (a subfolder's conftest may override them):
LMs pointed at the test's SimLM (our plugin's ``sim_lm``), closed afterwards, and clean
settings for every test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from dspy_actors import settings
from dspy_actors.lm import LM, RetryPolicy
from dspy_actors.testing.sim_lm import SimLM

MakeLM = Callable[..., LM]

# A responder failure is a 500; retry fast so such a test fails fast, not slowly.
FAST_RETRY = RetryPolicy(max_retries=1, base_delay=0.001, max_delay=0.005)


@pytest.fixture
def make_lm(sim_lm: SimLM) -> Iterator[MakeLM]:
    """LMs on the test's SimLM (uncached unless told otherwise); all closed at the end."""
    made: list[LM] = []

    def make(model: str = "openai/sim-model", **kw: Any) -> LM:
        kw.setdefault("cache", False)
        kw.setdefault("retry_policy", FAST_RETRY)
        kw.setdefault("api_key", "test-key")
        base = sim_lm.anthropic_base if model.startswith("anthropic/") else sim_lm.openai_base
        kw.setdefault("api_base", base)
        lm = LM(model, **kw)
        made.append(lm)
        return lm

    yield make
    for lm in made:
        lm.close()
    assert not sim_lm.responder_errors, f"responder failed: {sim_lm.responder_errors!r}"


@pytest.fixture(autouse=True)
def clean_settings() -> Iterator[None]:
    """No test sees another's configure(...)."""
    settings.reset()
    yield
    settings.reset()
