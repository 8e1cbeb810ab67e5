"""(1) Thousands of calls while the chaos monkey kills module actors every 50 ms."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from dspy_actors.lm.cache import Cache
from dspy_actors.runtime._errors import ModuleCrashed, ModuleUnavailable
from dspy_actors.runtime.app import App
from dspy_actors.testing import (
    CallLedger,
    ChaosMonkey,
    SimLM,
    assert_all_accounted,
    assert_tree_healthy,
    lm_on,
    wait_until,
)
from tests.reliability.programs import PIPELINE, StartApp

IN_FLIGHT = 64
# The traffic is paced by the kills, one kill per this many calls at least, so however fast
# or slow the machine, the kills land while calls are in flight.
CALLS_PER_KILL = 250


def _run_under_kills(
    start_app: StartApp, sim_lm: SimLM, calls: int, **program: Any
) -> tuple[CallLedger, int, App]:
    # 1,000 distinct questions, each asked 5 times: one call in five goes to the LM pool, the
    # others are answered from the (memory) cache inside the module actor. Every call still
    # crosses both step actors, which is what the kills hit.
    lm = lm_on(sim_lm, cache=True, cache_store=Cache(disk_path=None))
    app = start_app(lm=lm, submit_threads=IN_FLIGHT)
    qa = app.program("qa", PIPELINE, idempotent=True, timeout=30.0, **program)
    ledger = CallLedger(qa, hang_after_s=45.0)
    with ChaosMonkey(app, seed=5) as monkey:
        # Every actor of the program: its two steps (a pipeline has no entry actor).
        run = monkey.kill_every(f"{app.name}/qa@v1/*", every_s=0.05, duration_s=None)

        def paced_by_kills() -> Iterator[dict[str, str]]:
            for i in range(calls):
                if i % CALLS_PER_KILL == 0:
                    wait_until(
                        lambda i=i: run.kills >= i // CALLS_PER_KILL or run.stopped.is_set(),
                        timeout=60.0,
                        what=f"kill {i // CALLS_PER_KILL} before call {i}",
                    )
                yield {"question": f"question {i % 1000}"}

        ledger.run(paced_by_kills(), concurrency=IN_FLIGHT)
        monkey.stop()
    assert run.error is None
    print(ledger.summary(), f"kills={run.kills}")
    lm.close()
    return ledger, run.kills, app


def test_5000_calls_at_64_in_flight_under_kills_every_50ms_none_lost_none_hung(
    start_app: StartApp, sim_lm: SimLM
) -> None:
    ledger, kills, app = _run_under_kills(start_app, sim_lm, 5_000)
    assert kills >= 5_000 // CALLS_PER_KILL, f"the monkey killed {kills} actors"
    assert ledger.sent == 5_000
    # None lost, none hung: each call answered, or failed with the runtime's clear error
    # naming the module (retries of idempotent calls are bounded, see the test below).
    # A call fails only once its crash retries (3 by default) are spent, each on a kill it
    # was in flight for: at most IN_FLIGHT calls per kill, and far fewer in practice.
    assert_all_accounted(
        ledger,
        clear_errors=(ModuleCrashed, ModuleUnavailable),
        max_failed=min(kills * IN_FLIGHT // 4, 5_000 // 10),
    )
    assert ledger.answered >= 4_500
    assert_tree_healthy(app, within_s=15.0)


def test_idempotent_calls_all_answered_under_kills_every_50ms(
    start_app: StartApp, sim_lm: SimLM
) -> None:
    # A program meant to live through 20 kills a second says so: a restart intensity and a
    # crash-retry budget sized for it (the defaults, 10 restarts in 5 s and 3 retries, are
    # for programs that should rarely crash).
    ledger, kills, app = _run_under_kills(
        start_app, sim_lm, 2_000, intensity=1000, period=5.0, max_crash_retries=100
    )
    assert kills >= 2_000 // CALLS_PER_KILL, f"the monkey killed {kills} actors"
    assert_all_accounted(ledger, max_failed=0)
    assert ledger.answered == 2_000
    assert_tree_healthy(app, within_s=15.0)
