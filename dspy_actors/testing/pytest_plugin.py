"""pytest fixtures for testing programs against the simulated LM server.

Enable with ``pytest_plugins = ["dspy_actors.testing.pytest_plugin"]`` in a root
``conftest.py`` (or, once the package registers it, automatically via the ``pytest11``
entry point).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from dspy_actors.testing.sim_lm import SimLM


@pytest.fixture
def sim_lm() -> Iterator[SimLM]:
    """A fresh SimLM for one test (default responder, no faults, no latency), stopped and
    its threads joined when the test ends."""
    with SimLM() as sim:
        yield sim


@pytest.fixture(scope="session")
def sim_lm_session() -> Iterator[SimLM]:
    """One SimLM shared by a whole session (threads named ``sim-lm-session``, which the
    leak checks allow). Tests that script it should restore it: ``respond_with(None)``,
    ``clear_faults()``."""
    with SimLM(thread_name_prefix="sim-lm-session") as sim:
        yield sim


@pytest.fixture
def make_sim_lm() -> Iterator[Callable[..., SimLM]]:
    """A factory of started SimLMs (same arguments as ``SimLM``), all stopped at the end
    of the test: ``sim = make_sim_lm(latency=0.05, responder=...)``."""
    started: list[SimLM] = []

    def make(*args: Any, **kwargs: Any) -> SimLM:
        sim = SimLM(*args, **kwargs).start()
        started.append(sim)
        return sim

    yield make
    for sim in reversed(started):
        sim.stop()
