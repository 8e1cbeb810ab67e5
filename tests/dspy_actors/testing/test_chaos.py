"""The chaos monkey: kills by pattern at a rate, on the k-th call, reproducibly, and stops."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

import dspy_actors as dsa
from dspy_actors.runtime._lm_pool import LMWorkerCrashed
from dspy_actors.runtime.app import App
from dspy_actors.testing import ChaosMonkey, SimLM, assert_tree_healthy
from dspy_actors.testing._invariants import CallLedger, assert_all_accounted
from dspy_actors.testing._polling import wait_until

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
    wait_until(lambda: sum(_restarts(app, "qa@v1").values()) >= 4, timeout=60.0, what="4 restarts")
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
    # It looked for victims, found none, and kept going: proof it had the chance to kill.
    wait_until(lambda: endless.idle_ticks >= 2, timeout=30.0, what="two idle ticks")
    assert endless.thread is not None
    assert endless.thread.is_alive()
    chaos.stop()
    assert not endless.thread.is_alive()
    assert endless.kills == 0
    assert endless.idle_ticks >= 1


def test_same_seed_same_victims(make_app: Callable[..., App]) -> None:
    def victims(seed: int) -> list[str]:
        app = make_app(name="repro")  # (its own data dir: nothing carries over)
        try:
            app.program("qa", STEPS)
            with ChaosMonkey(app, seed=seed) as monkey:
                # The victims a tick picks from are the live ones: on a busy machine the
                # step killed last may not have restarted by the next tick. Hold each tick
                # until both steps are live, so the seed alone decides the choice.
                live_targets = monkey.targets

                def both_steps_live(pattern: str, **kw: Any) -> dict[str, Any]:
                    return wait_until(
                        lambda: found if len(found := live_targets(pattern, **kw)) == 2 else {},
                        timeout=30.0,
                        what="both steps live",
                    )

                monkey.targets = both_steps_live  # type: ignore[method-assign]
                run = monkey.kill_every("repro/qa@v1/?*", every_s=0.02, max_kills=6)
                assert run.thread is not None
                run.thread.join(60.0)
                assert run.kills == 6
                return [k.target for k in monkey.log]
        finally:
            app.stop()  # one app at a time, as a rerun of a script would be

    first, again, other = victims(3), victims(3), victims(4)
    assert first == again
    assert len(set(first)) == 2  # it did pick among both steps
    assert first != other or victims(5) != first


def test_crash_on_message_kills_the_module_on_its_kth_call(app: App, chaos: ChaosMonkey) -> None:
    qa = app.program("qa", STEPS)
    rule = chaos.crash_on_message("qa.answer", 3)
    for i in range(2):
        assert qa.call(question=f"call {i}").answer
    # Both calls' module.start events have reached the monkey: it had its chance to fire.
    assert app.events.flush(10.0)
    assert not rule.fired.is_set(), "fired before the 3rd call"
    assert rule.counts == {"qa.answer": 2}
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
    calls = 0

    def one_more_call_then_done() -> bool:
        nonlocal calls
        calls += 1
        assert qa.call(question=f"call {calls}").answer  # idempotent: retried past a kill
        app.events.flush(10.0)
        return rule.done

    wait_until(one_more_call_then_done, timeout=60.0, what="the rule to fire twice")
    assert rule.crashes == 2
    assert {k.target for k in chaos.log} == {f"{app.name}/qa@v1/first"}
    wait_until(lambda: _restarts(app, "qa@v1")["first"] == 2, timeout=60.0, what="2 restarts")
    assert _restarts(app, "qa@v1")["answer"] == 0


def test_kill_by_tree_path_reaches_lm_workers(app: App, chaos: ChaosMonkey) -> None:
    killed = chaos.kill(f"{app.name}/lm/workers/loop-0", by="tree")  # the LM's event loop
    assert killed == [f"{app.name}/lm/workers/loop-0"]

    def restarts() -> int:
        workers = app.root.supervisor("lm").supervisor("workers").which_children()
        return {w.id: w.restart_count for w in workers}["loop-0"]

    # The kill is asynchronous (the worker finishes its message first): wait for the
    # restart itself, not for a healthy tree, which the kill may not have reached yet.
    wait_until(lambda: restarts() >= 1, timeout=60.0, what="loop-0 restarted")
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
    make_app: Callable[..., App], sim_lm: SimLM
) -> None:
    sim_lm.latency = 0.1
    app = make_app(lm_max_in_flight=16, lm_processes=2)
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
    for k in range(3):
        wait_until(
            lambda k=k: _finished(ledger) >= 1 + 16 * k or not sender.is_alive(),
            timeout=120.0,
            what=f"{1 + 16 * k} calls finished",
        )
        if not sender.is_alive():
            break
        # A process being replaced is not a victim: wait for a live one.
        pid = wait_until(monkey.kill_lm_process, timeout=60.0, what="a live LM process")
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


def test_kill_lm_process_without_worker_processes_finds_nothing(
    app: App, chaos: ChaosMonkey
) -> None:
    assert chaos.kill_lm_process() is None
    assert chaos.kills == 0
