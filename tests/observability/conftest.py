"""Fixtures shared by the observability tests: an app on the test's SimLM whose LM fails
at once (no retries), so that every error a test injects is counted once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from dspy_actors.lm import LM
from dspy_actors.runtime.app import App
from dspy_actors.testing import SimLM

StartApp = Callable[..., App]


@pytest.fixture
def sim(sim_lm: SimLM) -> SimLM:
    """The test's SimLM: the plugin's ``sim_lm`` under the name these tests use."""
    return sim_lm


@pytest.fixture
def start_app(make_app: StartApp, make_lm: Callable[..., LM]) -> StartApp:
    """``start_app(cache=False, **options)``: the plugin's ``make_app`` with an LM that does
    not retry (``cache``: whether it caches answers); stopped when the test ends."""

    def start(*, cache: bool = False, **options: Any) -> App:
        lm = make_lm(api_key="sim", num_retries=0, retry_policy=None, cache=cache)
        return make_app(lm=lm, **options)

    return start
