"""Apps for the library tests: the plugin's ``make_app`` (on the test's SimLM, stopped
after) with at most 8 LM calls in flight unless told otherwise."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from dspy_actors.runtime.app import App

StartApp = Callable[..., App]


@pytest.fixture
def start_app(make_app: StartApp) -> StartApp:
    def make(**kw: Any) -> App:
        kw.setdefault("lm_max_in_flight", 8)
        return make_app(**kw)

    return make
