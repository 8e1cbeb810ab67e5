"""Replicas in separate processes sharing one PostgreSQL database: an upgrade on one
reaches the others (LISTEN/NOTIFY), a dead letter recorded by one is listed and replayed by
another. (A run started by one and resumed by another: tests/dspy_actors/runtime/test_runs.py,
``test_kill_9_of_the_process_then_resume_in_another[postgres]``.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

import dspy_actors as dsa
from dspy_actors.lm import LM
from dspy_actors.runtime.app import program_state
from dspy_actors.testing.sim_lm import SimLM
from tests.postgres.replica import Flaky

# One worker runs this whole module: its module-scoped servers then start once.
pytestmark = pytest.mark.xdist_group("postgres-replicas")

REPO = Path(__file__).resolve().parents[2]
DEMO = "What colour is the sky on a clear day?"


class Replica:
    """A replica process (tests/postgres/replica.py) driven line by line."""

    def __init__(self, sim: SimLM, store: str, data_dir: Path) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.postgres.replica", sim.openai_base, store,
             str(data_dir)],
            cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

    def wait_ready(self) -> None:
        assert self._line() == "ready"

    def _line(self) -> str:
        out: IO[str] | None = self.process.stdout
        assert out is not None
        line = out.readline()  # the replica's commands all wait with timeouts
        if not line:
            _, err = self.process.communicate(timeout=30)
            raise AssertionError(f"replica exited: {err[-3000:]}")
        return line.strip()

    def ask(self, command: str) -> str:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self._line()

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                self.ask("quit")
            except (AssertionError, BrokenPipeError):
                pass
        try:
            self.process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.communicate(timeout=30)


@pytest.fixture
def lm(sim_lm_session: SimLM) -> Iterator[LM]:
    client = LM("openai/sim-model", api_base=sim_lm_session.openai_base, api_key="k", cache=False)
    yield client
    client.close()


@pytest.fixture(scope="module")
def shared_url(postgres_cluster: Any) -> str:
    url: str = postgres_cluster.create_database()
    return url


@pytest.fixture(scope="module")
def replicas(
    sim_lm_session: SimLM, shared_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[Replica]]:
    """Two replica processes for the module (started together: each takes seconds)."""
    root = tmp_path_factory.mktemp("replicas")
    started = [Replica(sim_lm_session, shared_url, root / f"replica{i}") for i in range(2)]
    try:
        for replica in started:
            replica.wait_ready()
        yield started
    finally:
        for replica in started:
            replica.stop()


def test_an_upgrade_on_one_replica_reaches_the_others(
    sim_lm_session: SimLM, lm: LM, shared_url: str, tmp_path: Path, replicas: list[Replica]
) -> None:
    sim_lm = sim_lm_session
    with dsa.start(lm=lm, data_dir=tmp_path / "here", store=shared_url) as app:
        qa = app.serve("qa", dsa.Predict("question -> answer"))
        state = program_state(dsa.Predict("question -> answer"))
        state["self"]["demos"] = [{"question": DEMO, "answer": "blue"}]
        qa.upgrade(state)
        saved_as = app.parameters.latest_version("qa")
        assert saved_as is not None
        assert qa.state_version == saved_as
        for replica in replicas:
            # Store versions, not each app's own count of upgrades: two replicas starting
            # at once may both save a first state, and one then follows the other's.
            word, served, saved = replica.ask(f"version {saved_as}").split(" ", 2)
            assert word == "version"
            assert int(served) == saved_as  # the replica switched to the new version
            assert json.loads(saved)["self"]["demos"][0]["question"] == DEMO
            before = sim_lm.request_count
            assert replica.ask("call why?").startswith("answer ")
            # The replica's own call carried the demo: it serves the upgraded state.
            assert sim_lm.request_count == before + 1
            assert DEMO in json.dumps(sim_lm.requests[-1].messages)
        # Nothing was saved twice: the followers did not save the state again.
        assert app.parameters.latest_version("qa") == saved_as


def test_a_dead_letter_from_one_replica_is_replayed_by_another(
    lm: LM, shared_url: str, tmp_path: Path, replicas: list[Replica]
) -> None:
    word, letter_id = replicas[0].ask("poison").split()
    assert word == "dead"
    assert letter_id != "none"
    Flaky.fixed = True  # the fix, deployed on this replica
    try:
        with dsa.start(lm=lm, data_dir=tmp_path / "here", store=shared_url) as app:
            app.serve("flaky", Flaky())
            letters = app.dead_letters("flaky")
            assert [letter.id for letter in letters] == [letter_id]
            assert letters[0].inputs == {"question": "poison"}
            assert "cannot digest poison" in letters[0].message
            assert app.replay_dead_letter(letter_id).answer == "digested poison"
            assert app.dead_letters("flaky") == []
    finally:
        Flaky.fixed = False
