"""pytest fixtures for testing programs against the simulated LM server, under chaos.

Installing the package enables them in every test suite (a ``pytest11`` entry point named
``dspy_actors``); nothing to add to a ``conftest.py``:

- ``sim_lm``: a fresh :class:`SimLM` per test; ``sim_lm_session``: one per session;
  ``make_sim_lm``: a factory of servers.
- ``make_lm``: a factory of LMs on ``sim_lm`` (:func:`~dspy_actors.testing.lm_on`: uncached,
  fast retries), all closed after; the test fails if ``sim_lm``'s responder raised.
- ``make_app``: a factory of apps (``dsa.start``) on ``sim_lm``, each with its data in
  ``tmp_path``, all stopped after; ``app``: one of them, started for the test.
- ``chaos``: a :class:`ChaosMonkey` on ``app``, stopped after.
- ``postgres_cluster``: a throwaway PostgreSQL server for the session (see
  ``dspy_actors.testing.postgres``; the test skips without PostgreSQL binaries);
  ``postgres_url``: the URL of a fresh, empty database on it, one per test.

A test's own fixture of the same name overrides these.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from dspy_actors.testing.sim_lm import SimLM

if TYPE_CHECKING:
    # Imported lazily in the fixtures: loading the plugin must stay cheap for every suite.
    from dspy_actors.lm import LM
    from dspy_actors.runtime.app import App
    from dspy_actors.testing._chaos import ChaosMonkey


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


@pytest.fixture
def make_lm(sim_lm: SimLM) -> Iterator[Callable[..., LM]]:
    """A factory of LMs on this test's ``sim_lm`` (``lm_on``'s defaults: uncached, fast
    retries, a 10 s timeout; ``make_lm("anthropic/sim-model", temperature=0.5)``), all
    closed when the test ends. The test then fails if a responder it gave ``sim_lm``
    raised (the server answered those requests with a 500, which may have been retried
    into a pass)."""
    from dspy_actors.testing._sim_clients import lm_on

    made: list[LM] = []

    def make(model: str = "openai/sim-model", **kw: Any) -> LM:
        lm = lm_on(sim_lm, model, **kw)
        made.append(lm)
        return lm

    yield make
    for lm in made:
        lm.close()
    assert not sim_lm.responder_errors, f"the responder raised: {sim_lm.responder_errors!r}"


@pytest.fixture
def make_app(make_lm: Callable[..., LM], tmp_path: Path) -> Iterator[Callable[..., App]]:
    """A factory of apps: ``make_app(**options)`` is ``dsa.start(**options)`` with, unless
    given, an LM from ``make_lm`` (on this test's ``sim_lm``) and a fresh data dir in
    ``tmp_path``. Every app is stopped, with every thread it started, when the test ends."""
    from dspy_actors.runtime.app import start

    apps: list[App] = []

    def make(**options: Any) -> App:
        options.setdefault("lm", make_lm())
        options.setdefault("data_dir", tmp_path / f"app{len(apps)}")
        running = start(**options)
        apps.append(running)
        return running

    yield make
    for running in reversed(apps):
        running.stop()


@pytest.fixture
def app(make_app: Callable[..., App]) -> App:
    """An app on this test's ``sim_lm`` (``make_app``: an LM from ``lm_on`` with fast
    retries and no cache, so every call reaches the server; its stores in ``tmp_path``)
    with 8 LM requests in flight at most; stopped when the test ends."""
    return make_app(lm_max_in_flight=8)


@pytest.fixture
def chaos(app: App) -> Iterator[ChaosMonkey]:
    """A :class:`~dspy_actors.testing.ChaosMonkey` on this test's ``app`` (seed 0), stopped
    (its threads joined, its event subscriptions removed) when the test ends."""
    from dspy_actors.testing._chaos import ChaosMonkey

    monkey = ChaosMonkey(app, seed=0)
    try:
        yield monkey
    finally:
        monkey.stop()


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[Any]:
    """A PostgreSQL server started with initdb/pg_ctl in a temp dir for the whole session,
    stopped (and its files removed) at the end. Skips the test if PostgreSQL is missing."""
    from dspy_actors.testing.postgres import PostgresCluster, PostgresUnavailable

    try:
        cluster = PostgresCluster()
    except PostgresUnavailable as exc:
        pytest.skip(str(exc))
    with cluster:
        yield cluster


@pytest.fixture
def postgres_url(postgres_cluster: Any) -> str:
    """The URL of a new, empty database on the session's PostgreSQL server."""
    url: str = postgres_cluster.create_database()
    return url
