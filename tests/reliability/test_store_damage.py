"""(5) The SQLite files (LM cache, parameter store, dead letters) deleted or corrupted while
the app runs: no caller crashes."""

from __future__ import annotations

import itertools
import threading
from pathlib import Path

import dspy_actors as dsa
from dspy_actors.lm.cache import Cache
from dspy_actors.testing import (
    CallLedger,
    ChaosMonkey,
    SimLM,
    assert_all_accounted,
    assert_tree_healthy,
    lm_on,
    wait_until,
)
from tests.reliability.programs import Poison, StartApp

GARBAGE = b"this is not an SQLite database, it was overwritten on purpose\n" * 64


def _damage(path: Path, how: str) -> None:
    """Delete the file (and its WAL companions) or overwrite its header with garbage."""
    for companion in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        if how == "delete" or companion != path:
            companion.unlink(missing_ok=True)
        elif path.exists():
            with path.open("r+b") as file:
                file.write(GARBAGE)


def test_cache_and_store_files_damaged_while_serving_no_caller_crashes(
    sim_lm: SimLM, start_app: StartApp, tmp_path: Path
) -> None:
    cache_path = tmp_path / "lm_cache.sqlite3"
    cache = Cache(disk_path=cache_path)
    lm = lm_on(sim_lm, cache=True, cache_store=cache)
    data_dir = tmp_path / "data"
    app = start_app(lm=lm, data_dir=data_dir, poison_threshold=2)
    qa = app.serve("qa", dsa.ChainOfThought("question -> answer"), idempotent=True)
    poisonable = app.serve("poisonable", Poison())
    files = [cache_path, data_dir / "parameters.sqlite3", data_dir / "dead_letters.sqlite3"]
    assert all(f.exists() for f in files[1:])

    ledger = CallLedger(qa, hang_after_s=30.0)
    # A few distinct questions asked again and again (the cache is read and written all
    # along), until the damage is done.
    damaged = threading.Event()
    questions = itertools.takewhile(
        lambda _q: not damaged.is_set(),
        ({"question": f"what is {i % 7} + 1?"} for i in itertools.count()),
    )
    driver = threading.Thread(
        target=ledger.run, args=(questions,), kwargs={"concurrency": 8}, name="driver"
    )
    with ChaosMonkey(app, seed=2) as monkey:
        # Restarted actors reload their learned state from the parameter store.
        run = monkey.kill_every(f"{app.name}/qa@v*/", every_s=0.2, duration_s=None)
        driver.start()
        for round_ in range(4):
            # Let calls, kills and restarts run on the damaged files: wait for more calls
            # answered and another kill since the last damage.
            answered, kills = ledger.answered, run.kills
            wait_until(
                lambda a=answered, k=kills: ledger.answered >= a + 20 and run.kills > k,
                timeout=60.0,
                what=f"calls and a kill in round {round_}",
            )
            how = "delete" if round_ % 2 == 0 else "corrupt"
            for path in files:
                _damage(path, how)
            # A poison input writes to the dead-letter store right after the damage.
            poison = CallLedger(poisonable, hang_after_s=30.0)
            for _ in range(2):
                try:
                    poison.call(question=f"poison {round_}")
                except (dsa.ModuleCrashed, dsa.DeadLettered):
                    pass
            assert_all_accounted(poison)
            assert poison.errors()["DeadLettered"] == 1, poison.summary()
            if round_ == 2:
                qa.upgrade(dsa.ChainOfThought("question -> answer"))  # writes the parameter store
        damaged.set()
        driver.join(60.0)
        monkey.stop()
    assert not driver.is_alive()
    assert run.kills >= 1
    assert_all_accounted(ledger, max_failed=0)
    assert ledger.sent > 100
    # The stores rebuilt themselves and still work.
    assert app.parameters.health().rebuilds >= 1
    assert app.parameters.health().history_lost  # said out loud, not hidden
    assert qa.version == 2
    letters = {dict(d.inputs)["question"] for d in app.dead_letters("poisonable")}
    assert "poison 3" in letters, letters
    assert cache.health().status in ("ok", "degraded")
    assert_tree_healthy(app, within_s=10.0)
    cache.close()
    lm.close()
