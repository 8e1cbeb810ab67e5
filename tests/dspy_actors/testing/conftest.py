"""The harness's own tests use its pytest plugin's fixtures."""

from dspy_actors.testing.pytest_plugin import make_sim_lm, sim_lm, sim_lm_session  # noqa: F401
