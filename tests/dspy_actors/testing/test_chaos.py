"""The chaos monkey: kills by pattern at a rate, on the k-th call, reproducibly, and stops."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

import dspy_actors as dsa
from dspy_actors.runtime.app import App
from dspy_actors.runtime.lm_pool import LMWorkerCrashed
from dspy_actors.testing import ChaosMonkey, SimLM, assert_tree_healthy
from dspy_actors.testing.invariants import CallLedger, assert_all_accounted

STEPS: list[tuple[str, Any, dict[str, Any]]] = [
    ("first", dsa.Predict, {"signature": "question -> draft"}),
    ("answer", dsa.Predict, {"signature": "question, draft -> answer"}),
]


def _restarts(app: App, program: str) -> dict[str, int]:
    sub = app.root.supervisor("modules").supervisor(program)
    return {info.id: info.restart_count for info in sub.which_children()}


def test_kill_every_kills_matching_actors_in_a_named_thread_until_max_kills(
    app: App, chaos: ChaosMonkey
) -> None:
    qa = app.program("qa", STEPS, idempotent=True)
    run = chaos.kill_every(f"{app.name}/qa@v1/?*", every_s=0.02, max_kills=4)
    assert run.thread is not None
    assert run.thread.name.startswith("chaos-")
    run.thread.join(60.0)
    assert not run.running
    assert run.kills == 4
    assert chaos.kills == 4
    assert {k.target for k in chaos.log} <= {f"{app.name}/qa@v1/first", f"{app.name}/qa@v1/answer"}
    assert_tree_healthy(app, within_s=60.0)
    # A killed actor finishes its message before it exits: the last restart may lag.
    deadline = time.monotonic() + 10.0
    while sum(_restarts(app, "qa@v1").values()) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sum(_restarts(app, "qa@v1").values()) == 4
    assert qa.call(question="still served?").answer


def test_kill_every_stops_after_its_duration_and_on_stop(app: App, chaos: ChaosMonkey) -> None:
    app.program("qa", STEPS)
    timed = chaos.kill_every(f"{app.name}/qa@v1/first", every_s=0.02, duration_s=0.2)
    assert timed.thread is not None
    timed.thread.join(60.0)
    assert not timed.running
    assert timed.kills >= 1
    endless = chaos.kill_every("no such actor", every_s=0.01, duration_s=None)
    time.sleep(0.1)
    assert endless.thread is not None
    assert endless.thread.is_alive()
    chaos.stop()
    assert not endless.thread.is_alive()
    assert endless.kills == 0
    assert endless.idle_ticks >= 1


def test_same_seed_same_victims(sim_lm: SimLM, tmp_path: Path) -> None:
    def victims(seed: int, run_index: int) -> list[str]:
        lm = dsa.LM("openai/sim-model", api_base=sim_lm.openai_base, api_key="k", cache=False)
        with dsa.start(lm=lm, name="repro", data_dir=tmp_path / f"r{run_index}") as app:
            app.program("qa", STEPS)
            with ChaosMonkey(app, seed=seed) as monkey:
                run = monkey.kill_every("repro/qa@v1/?*", every_s=0.1, max_kills=6)
                assert run.thread is not None
                run.thread.join(60.0)
                assert run.kills == 6
                return [k.target for k in monkey.log]

    first, again, other = victims(3, 0), victims(3, 1), victims(4, 2)
    assert first == again
    assert len(set(first)) == 2  # it did pick among both steps
    assert first != other or victims(5, 3) != first


def test_crash_on_message_kills_the_module_on_its_kth_call(app: App, chaos: ChaosMonkey) -> None:
    qa = app.program("qa", STEPS)
    rule = chaos.crash_on_message("qa.answer", 3)
    for i in range(2):
        assert qa.call(question=f"call {i}").answer
    assert not rule.fired.wait(0.3), "fired before the 3rd call"
    try:
        qa.call(question="the third")
    except dsa.ModuleCrashed:
        pass  # the kill may land while this call is still in flight
    assert rule.fired.wait(5.0)
    assert rule.crashes == 1
    assert chaos.log[-1].target == f"{app.name}/qa@v1/answer"
    assert_tree_healthy(app, within_s=60.0)
    assert _restarts(app, "qa@v1")["answer"] == 1
    assert _restarts(app, "qa@v1")["first"] == 0
    # times=1: the rule is spent; more calls are answered.
    for i in range(4):
        assert qa.call(question=f"later {i}").answer
    assert rule.crashes == 1


def test_crash_on_message_matches_registry_names_too(app: App, chaos: ChaosMonkey) -> None:
    qa = app.program("qa", STEPS, idempotent=True)
    rule = chaos.crash_on_message(f"{app.name}/qa@v*/first", 1, times=2)
    for i in range(6):
        qa.call(question=f"call {i}")
        if rule.done:
            break
        rule.fired.wait(1.0)
    deadline = time.monotonic() + 5.0
    while not rule.done and time.monotonic() < deadline:
        qa.call(question="more")
        time.sleep(0.05)
    assert rule.crashes == 2


def test_kill_by_tree_path_reaches_lm_workers(app: App, chaos: ChaosMonkey) -> None:
    killed = chaos.kill(f"{app.name}/lm/workers/loop-0", by="tree")  # the LM's event loop
    assert killed == [f"{app.name}/lm/workers/loop-0"]

    def restarts() -> int:
        workers = app.root.supervisor("lm").supervisor("workers").which_children()
        return {w.id: w.restart_count for w in workers}["loop-0"]

    # The kill is asynchronous (the worker finishes its message first): wait for the
    # restart itself, not for a healthy tree, which the kill may not have reached yet.
    deadline = time.monotonic() + 60.0
    while restarts() < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert restarts() == 1
    assert_tree_healthy(app, within_s=60.0)
    assert f"{app.name}/lm/workers" in chaos.targets(f"{app.name}/lm/*", by="tree")


def test_bad_arguments_are_refused(app: App, chaos: ChaosMonkey) -> None:
    with pytest.raises(ValueError, match="every_s"):
        chaos.kill_every("*", every_s=0)
    with pytest.raises(ValueError, match="k must be"):
        chaos.crash_on_message("*", 0)


def test_stop_leaves_no_chaos_thread(app: App) -> None:
    monkey = ChaosMonkey(app, seed=1)
    for _ in range(3):
        monkey.kill_every("nothing", every_s=0.01, duration_s=None)
    monkey.stop()
    assert not [t for t in threading.enumerate() if t.name.startswith("chaos-")]
    assert all(not run.running for run in monkey.runs)


def _finished(ledger: CallLedger) -> int:
    return sum(o.status != "pending" for o in ledger.outcomes)


def test_kill_lm_process_sigkills_a_worker_process_and_no_call_is_lost(
    sim_lm: SimLM, tmp_path: Path
) -> None:
    sim_lm.latency = 0.1
    lm = dsa.LM("openai/sim-model", api_base=sim_lm.openai_base, api_key="sim", cache=False)
    with dsa.start(lm=lm, data_dir=tmp_path, lm_workers=16, lm_processes=2) as app:
        monkey = ChaosMonkey(app, seed=3)
        qa = app.serve("qa", dsa.Predict("question -> answer"))
        ledger = CallLedger(qa, hang_after_s=30)
        sender = threading.Thread(
            target=ledger.run,
            args=([{"question": f"q{i}"} for i in range(96)],),
            kwargs={"concurrency": 32},
        )
        sender.start()
        # Three kills while calls are in flight, paced by the calls' progress (the k-th
        # once 1 + 16k calls have finished): conditions, not sleeps, so a busy machine only
        # makes the test slower.
        pids: list[int] = []
        deadline = time.monotonic() + 120
        while len(pids) < 3 and sender.is_alive() and time.monotonic() < deadline:
            if _finished(ledger) < 1 + 16 * len(pids):
                time.sleep(0.01)
                continue
            pid = monkey.kill_lm_process()
            if pid is not None:
                pids.append(pid)
        sender.join(timeout=120)
        assert not sender.is_alive()
        assert pids, "a worker process must have been found and killed"
        assert monkey.kills == len(pids)
        assert {k.by for k in monkey.log} == {"kill_lm_process"}
        assert all("/lm/workers/process-" in k.target for k in monkey.log)
        assert_all_accounted(ledger)
        assert_tree_healthy(app, within_s=60)
        # A request dies for good only if both processes it ran on were killed under it
        # (LMWorkerCrashed, a clear error): at most a process's 8 slots per kill.
        failed = [o for o in ledger.outcomes if o.status == "failed"]
        assert all(isinstance(o.error, LMWorkerCrashed) for o in failed), failed[:3]
        assert len(failed) <= 8 * len(pids)
    lm.close()


def test_kill_lm_process_without_worker_processes_finds_nothing(
    app: App, chaos: ChaosMonkey
) -> None:
    assert chaos.kill_lm_process() is None
    assert chaos.kills == 0
