"""Streaming tests use the runtime tests' fixtures: a SimLM per test (``sim``), ``make_lm``
and ``start_app`` (apps started on it, stopped after)."""

from __future__ import annotations

from tests.dspy_actors.runtime.conftest import StartApp, make_lm, sim, start_app

__all__ = ["StartApp", "make_lm", "sim", "start_app"]
