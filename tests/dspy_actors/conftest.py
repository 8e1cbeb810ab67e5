"""Fixtures shared by the dspy_actors tests (a subfolder's conftest may override them).
LMs on the test's SimLM come from our pytest plugin (``sim_lm``, ``make_lm``: what users
get); here, clean settings for every test."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from dspy_actors import _settings as settings
from dspy_actors.lm import LM

# The type of the plugin's ``make_lm`` fixture.
MakeLM = Callable[..., LM]


@pytest.fixture(autouse=True)
def clean_settings() -> Iterator[None]:
    """No test sees another's configure(...)."""
    settings.reset()
    yield
    settings.reset()
