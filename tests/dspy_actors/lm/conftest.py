"""Fixtures for the LM tests: a fresh SimLM per test and LMs that are closed afterwards."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from dspy_actors.lm import LM, RetryPolicy
from dspy_actors.testing.pytest_plugin import sim_lm  # noqa: F401 - re-exported fixture


@pytest.fixture
def make_lm() -> Iterator[Callable[..., LM]]:
    """Build LMs (uncached and with fast retries unless told otherwise); close them all."""
    made: list[LM] = []

    def make(model: str = "openai/sim-model", **kw: Any) -> LM:
        kw.setdefault("cache", False)
        # Retries wait milliseconds, not seconds (Retry-After headers still rule).
        kw.setdefault("retry_policy", RetryPolicy(max_retries=3, base_delay=0.005, max_delay=0.02))
        kw.setdefault("api_key", "test-key")
        lm = LM(model, **kw)
        made.append(lm)
        return lm

    yield make
    for lm in made:
        lm.close()
