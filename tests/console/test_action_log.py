"""The console's action log is kept in the app's store (as the dead letters are): it
survives a restart and is shown by the next console."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import dspy_actors as dsa
from dspy_actors.runtime._dead_letters import MAX_FIELD_CHARS, DeadLetterStore
from dspy_actors.runtime._errors import DeadLettered
from dspy_actors.testing import SimLM
from tests.console.conftest import API_KEY, Fragile


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DeadLetterStore]:
    where: Any = tmp_path / "dead_letters.sqlite"
    if request.param == "postgres":
        where = request.getfixturevalue("postgres_url")
    s = DeadLetterStore(where)
    yield s
    s.close()


def test_actions_are_kept_in_order_redacted_and_capped(store: DeadLetterStore) -> None:
    store.record_action(
        action="replay", target="l1", who="alice", via="cookie", client="127.0.0.1",
        ok=True, outcome="Prediction(answer='4')", at=1000.0,
    )  # fmt: skip
    store.record_action(
        action="discard", target="l2", who="bob", via="bearer", client="127.0.0.1",
        ok=False, outcome=f"failed with key {API_KEY}" + "x" * (2 * MAX_FIELD_CHARS),
    )  # fmt: skip
    first, second = store.actions()
    assert (first.action, first.target, first.who, first.via, first.ok, first.at) == (
        "replay", "l1", "alice", "cookie", True, 1000.0,
    )  # fmt: skip
    assert (second.action, second.who, second.ok) == ("discard", "bob", False)
    assert API_KEY not in second.outcome
    assert len(second.outcome) < MAX_FIELD_CHARS + 200
    assert [a.target for a in store.actions(limit=1)] == ["l2"]


def _quarantine(app: Any, question: str) -> str:
    Fragile.broken.add(question)
    svc = app.serve("svc", Fragile(), idempotent=True)
    with pytest.raises(DeadLettered):
        svc.call(question=question)
    (letter,) = app.dead_letters("svc")
    return str(letter.id)


def test_the_action_log_survives_a_restart_and_shows_in_the_next_console(
    tmp_path: Path,
) -> None:
    def start(sim: SimLM) -> Any:
        lm = dsa.LM("openai/sim-model", api_base=sim.openai_base, api_key=API_KEY, cache=False)
        return dsa.start(lm=lm, data_dir=tmp_path / "data", poison_threshold=2)

    with SimLM() as sim:
        try:
            with start(sim) as app, app.console(announce=None) as console:
                letter = _quarantine(app, "poison")
                headers = {"Authorization": f"Bearer {console.token}", "X-Console-User": "carol"}
                with httpx.Client(base_url=console.base_url, headers=headers, timeout=30) as c:
                    assert c.post(f"/api/dead_letters/{letter}/discard").status_code == 200
        finally:
            Fragile.broken.clear()
        with start(sim) as app, app.console(announce=None) as console:
            headers = {"Authorization": f"Bearer {console.token}"}
            with httpx.Client(base_url=console.base_url, headers=headers, timeout=30) as c:
                actions = c.get("/api/actions").json()
                activity = c.get("/api/state").json()["activity"]
    assert [(a["action"], a["target"], a["who"], a["ok"]) for a in actions] == [
        ("discard", letter, "carol", True)
    ]
    assert actions[0]["via"] == "bearer"
    assert actions[0]["when"] > 0
    shown = [e for e in activity if e["kind"] == "action"]
    assert len(shown) == 1
    assert "carol" in shown[0]["text"]
    assert f"discard {letter}" in shown[0]["text"]
