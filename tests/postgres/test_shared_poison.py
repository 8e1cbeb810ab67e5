"""Crash counts of a poison input add up across replicas sharing PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import dspy_actors as dsa
from dspy_actors import DeadLettered, ModuleCrashed
from dspy_actors.lm import LM
from dspy_actors.testing.sim_lm import SimLM
from tests.postgres.replica import Flaky


@pytest.fixture
def lm(sim_lm_session: SimLM) -> Iterator[LM]:
    client = LM("openai/sim-model", api_base=sim_lm_session.openai_base, api_key="k", cache=False)
    yield client
    client.close()


def test_an_input_crashing_each_replica_once_is_quarantined_overall(
    lm: LM, postgres_url: str, tmp_path: Path
) -> None:
    options = {"lm": lm, "store": postgres_url, "poison_threshold": 2}
    with (
        dsa.start(data_dir=tmp_path / "a", **options) as one,
        dsa.start(data_dir=tmp_path / "b", **options) as two,
    ):
        flaky_one = one.serve("flaky", Flaky())
        flaky_two = two.serve("flaky", Flaky())
        with pytest.raises(ModuleCrashed):
            flaky_one.call(question="poison")  # crash 1 (on replica one)
        with pytest.raises(DeadLettered) as dead:
            flaky_two.call(question="poison")  # crash 2 (on replica two): the threshold
        assert [letter.id for letter in one.dead_letters("flaky")] == [dead.value.dead_letter_id]
        # The count restarts from zero after quarantine: released and replayed after a fix.
        Flaky.fixed = True
        try:
            assert two.replay_dead_letter(dead.value.dead_letter_id).answer == "digested poison"
        finally:
            Flaky.fixed = False
        with pytest.raises(ModuleCrashed):
            flaky_one.call(question="poison")  # crash 1 again, not 3: not quarantined
