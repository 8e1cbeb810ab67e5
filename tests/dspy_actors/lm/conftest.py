"""The LM tests use the plugin's fixtures: ``sim_lm`` and ``make_lm`` (LMs on it, uncached,
fast retries, closed afterwards; a test passes ``api_base=`` for another server)."""

from __future__ import annotations

from dspy_actors.testing.pytest_plugin import make_lm, sim_lm

__all__ = ["make_lm", "sim_lm"]
