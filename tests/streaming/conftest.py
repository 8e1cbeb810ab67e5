"""Streaming tests use the runtime tests' fixtures: a SimLM per test (``sim``) and
``start_app``; LMs come from the plugin's ``make_lm``."""

from tests.dspy_actors.runtime.conftest import StartApp, sim, start_app

__all__ = ["StartApp", "sim", "start_app"]
