"""Apps for the library tests: the plugin's ``make_app`` (on the test's SimLM, stopped
after) with 8 LM worker threads unless told otherwise."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from dspy_actors.runtime.app import App

StartApp = Callable[..., App]


@pytest.fixture
def start_app(make_app: StartApp) -> StartApp:
    def make(**kw: Any) -> App:
        kw.setdefault("lm_workers", 8)
        return make_app(**kw)

    return make
