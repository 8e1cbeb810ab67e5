"""Supervisor semantics, after OTP's supervisor_SUITE: restart types x exit kinds, strategies,
shutdown kinds, start order and failures, the child API and its errors, intensity and
escalation, names across restarts, introspection and events."""

from __future__ import annotations

import threading
import time
from typing import Any

import pykka
import pytest

import supervisors as sup
from dspy_actors.testing._clock import FakeClock
from dspy_actors.testing._polling import wait_until
from tests.supervisors.actors import (
    EventLog,
    Journal,
    Worker,
    crash,
    new_ref,
    spec,
)

# --- restart type x exit kind --------------------------------------------------------------------


def _exit(ref: Any, how: str) -> None:
    if how == "normal":
        ref.tell("stop")
    elif how == "shutdown":
        sup.request_exit(ref, sup.SHUTDOWN)  # someone other than the supervisor shut it down
    elif how == "crash":
        ref.tell("crash")
    else:
        sup.kill(ref)
    sup.wait_for_exit(ref, 5.0)


RESTART_TABLE = [
    ("permanent", "normal", True),
    ("permanent", "shutdown", True),
    ("permanent", "crash", True),
    ("permanent", "killed", True),
    ("transient", "normal", False),
    ("transient", "shutdown", False),
    ("transient", "crash", True),
    ("transient", "killed", True),
    ("temporary", "normal", False),
    ("temporary", "shutdown", False),
    ("temporary", "crash", False),
    ("temporary", "killed", False),
]


@pytest.mark.parametrize(("restart", "how", "restarted"), RESTART_TABLE)
def test_restart_type_decides_on_each_exit_kind(restart: Any, how: str, restarted: bool) -> None:
    root = sup.Supervisor.start([spec("w", restart=restart), spec("other")], name="root")
    try:
        old = root.child("w")
        _exit(old, how)
        if restarted:
            assert new_ref(root, "w", old).is_alive()
            info = next(i for i in root.which_children() if i.id == "w")
            assert info.restart_count == 1
            assert info.last_exit is not None
            assert info.last_exit.kind == how
        else:
            # The supervisor has handled the exit (it cleared the child's ref, in the same
            # turn in which it would have restarted it): a wrong restart had its chance.
            wait_until(lambda: root.child("w") is None)
            ids = [i.id for i in root.which_children()]
            if restart == "temporary":
                assert ids == ["other"], "a temporary child's spec is forgotten when it exits"
            else:
                assert ids == ["w", "other"]
                info = root.which_children()[0]
                assert info.state == "terminated"
                assert info.ref is None
                assert info.restart_count == 0
        assert root.child("other") is not None
    finally:
        root.stop()


# --- strategies ----------------------------------------------------------------------------------


def _start_three(strategy: Any, journal: Journal) -> sup.Supervisor:
    return sup.Supervisor.start(
        [spec("a", journal), spec("b", journal), spec("c", journal)],
        strategy=strategy,
        name=strategy,
    )


def test_one_for_one_restarts_only_the_crashed_child() -> None:
    journal = Journal()
    root = _start_three("one_for_one", journal)
    try:
        before = {i.id: i.ref for i in root.which_children()}
        journal.clear()
        crash(before["b"])
        new_ref(root, "b", before["b"])
        after = {i.id: i.ref for i in root.which_children()}
        assert after["a"] is before["a"]
        assert after["c"] is before["c"]
        assert journal.of("start") == ["b"]
        assert journal.of("stop") == []
    finally:
        root.stop()


def test_one_for_all_restarts_every_child_stopping_in_reverse_starting_in_order() -> None:
    journal = Journal()
    root = _start_three("one_for_all", journal)
    try:
        before = {i.id: i.ref for i in root.which_children()}
        journal.clear()
        crash(before["b"])
        wait_until(lambda: len(journal.of("start")) == 3)
        after = {i.id: i.ref for i in root.which_children()}
        assert all(after[k] is not before[k] for k in "abc")
        assert journal.of("stop") == ["c", "a"]
        assert journal.of("start") == ["a", "b", "c"]
        assert [i.restart_count for i in root.which_children()] == [1, 1, 1]
    finally:
        root.stop()


def test_rest_for_one_restarts_the_crashed_child_and_those_started_after_it() -> None:
    journal = Journal()
    root = _start_three("rest_for_one", journal)
    try:
        before = {i.id: i.ref for i in root.which_children()}
        journal.clear()
        crash(before["b"])
        wait_until(lambda: len(journal.of("start")) == 2)
        after = {i.id: i.ref for i in root.which_children()}
        assert after["a"] is before["a"]
        assert after["b"] is not before["b"]
        assert after["c"] is not before["c"]
        assert journal.of("stop") == ["c"]
        assert journal.of("start") == ["b", "c"]
    finally:
        root.stop()


def test_one_for_all_drops_temporary_siblings_it_terminates() -> None:
    root = sup.Supervisor.start(
        [spec("a"), spec("temp", restart="temporary"), spec("c")], strategy="one_for_all"
    )
    try:
        old = root.child("a")
        crash(old)
        new_ref(root, "a", old)
        assert [i.id for i in root.which_children()] == ["a", "c"]
    finally:
        root.stop()


def test_unknown_strategy_is_refused_with_a_clear_error() -> None:
    with pytest.raises(ValueError, match="strategy must be one of"):
        sup.Supervisor.start([], strategy="all_for_none")  # type: ignore[arg-type]


# --- shutdown kinds and order --------------------------------------------------------------------


def test_shutdown_stops_children_in_reverse_start_order() -> None:
    journal = Journal()
    root = _start_three("one_for_one", journal)
    assert journal.of("start") == ["a", "b", "c"]
    assert root.stop() == sup.SHUTDOWN
    assert journal.of("stop") == ["c", "b", "a"]
    assert not root.is_alive


def test_numeric_shutdown_abandons_a_child_that_does_not_stop_in_time() -> None:
    with EventLog() as events:
        root = sup.Supervisor.start([spec("slow", stop_delay=0.6, shutdown=0.05)], name="sd")
        try:
            slow = root.child("slow")
            root.terminate_child("slow")
            (info,) = root.which_children()
            assert info.state == "terminated"
            assert info.last_exit == sup.KILLED
            assert root.count_children().abandoned == 1
            tree = root.tree()
            assert any(n.state == "abandoned" for n in tree.walk())
            assert [e.child_id for e in events.of("child_abandoned")] == ["slow"]
            assert slow is not None
            # The thread keeps running (Python cannot kill it) until its on_stop returns.
            assert sup.wait_for_exit(slow, 5.0) is not None
            assert root.count_children().abandoned == 0
        finally:
            root.stop()


def test_brutal_kill_does_not_wait_and_reports_killed() -> None:
    root = sup.Supervisor.start([spec("w", stop_delay=0.3, shutdown="brutal_kill")])
    try:
        ref = root.child("w")
        root.terminate_child("w")
        assert root.which_children()[0].last_exit == sup.KILLED
        assert sup.wait_for_exit(ref, 5.0) == sup.KILLED
    finally:
        root.stop()


def test_infinity_shutdown_waits_for_the_child_to_finish() -> None:
    journal = Journal()
    root = sup.Supervisor.start([spec("w", journal, stop_delay=0.2, shutdown="infinity")])
    try:
        root.terminate_child("w")
        assert journal.of("stop") == ["w"], "terminate_child returned before the child stopped"
        assert root.which_children()[0].last_exit == sup.SHUTDOWN
        assert root.count_children().abandoned == 0
    finally:
        root.stop()


def test_child_spec_validation_errors_name_the_child() -> None:
    with pytest.raises(ValueError, match=r"id='w'.*restart must be"):
        sup.ChildSpec("w", Worker, restart="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"id='w'.*shutdown must be"):
        sup.ChildSpec("w", Worker, shutdown=-1)
    with pytest.raises(ValueError, match=r"id='w'.*shutdown must be"):
        sup.ChildSpec("w", Worker, shutdown="gently")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not a Pykka actor"):
        sup.ChildSpec("w", int)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-empty"):
        sup.ChildSpec("", Worker)
    with pytest.raises(ValueError, match="duplicate child id 'w'"):
        sup.Supervisor.start([spec("w"), spec("w")])
    assert sup.ChildSpec("w", Worker).shutdown == 5.0
    assert sup.ChildSpec("s", Worker, type="supervisor").shutdown == "infinity"


# --- start order and start failures --------------------------------------------------------------


def test_a_child_failing_to_start_stops_those_started_and_names_itself() -> None:
    journal = Journal()
    with pytest.raises(sup.StartError) as error:
        sup.Supervisor.start(
            [spec("a", journal), spec("b", journal), spec("bad", fail_start=lambda: True)],
            name="root",
        )
    assert error.value.child_id == "bad"
    assert "refuses to start" in str(error.value)
    assert journal.of("start") == ["a", "b"]
    assert journal.of("stop") == ["b", "a"]


def test_a_factory_returning_something_else_is_a_start_error() -> None:
    bad = sup.ChildSpec("f", lambda: "not a ref")
    with pytest.raises(sup.StartError, match=r"'f'.*not an ActorRef"):
        sup.Supervisor.start([bad])


def test_a_factory_child_and_a_plain_pykka_class_are_both_supervised() -> None:
    class Plain(pykka.ThreadingActor):
        def on_receive(self, message: Any) -> Any:
            if message == "crash":
                raise ValueError("plain crash")
            return message

    root = sup.Supervisor.start(
        [
            sup.ChildSpec("factory", lambda: Worker.start("factory")),
            sup.ChildSpec("plain", Plain),
        ]
    )
    try:
        for child_id in ("factory", "plain"):
            old = root.child(child_id)
            crash(old)
            expected = ("factory", 7) if child_id == "factory" else 7
            assert sup.ask(new_ref(root, child_id, old), 7, timeout=5.0) == expected
    finally:
        root.stop()


# --- the child API and its errors ----------------------------------------------------------------


def test_start_terminate_restart_delete_child_with_otp_errors() -> None:
    root = sup.Supervisor.start([spec("a")], name="api")
    try:
        ref = root.start_child(spec("b"))
        assert ref.is_alive()
        assert [i.id for i in root.which_children()] == ["a", "b"]
        with pytest.raises(sup.AlreadyStarted, match="'b'"):
            root.start_child(spec("b"))
        with pytest.raises(sup.ChildRunning):
            root.restart_child("b")
        with pytest.raises(sup.ChildRunning):
            root.delete_child("b")

        root.terminate_child("b")
        assert not ref.is_alive()
        with pytest.raises(sup.AlreadyPresent, match="'b'"):
            root.start_child(spec("b"))
        ref2 = root.restart_child("b")
        assert ref2.is_alive()
        assert ref2 is not ref
        root.terminate_child("b")
        root.delete_child("b")
        assert [i.id for i in root.which_children()] == ["a"]

        for call in (root.terminate_child, root.restart_child, root.delete_child):
            with pytest.raises(sup.ChildNotFound, match="'nope'"):
                call("nope")  # type: ignore[operator]
        with pytest.raises(sup.StartError, match="'bad'"):
            root.start_child(spec("bad", fail_start=lambda: True))
        assert [i.id for i in root.which_children()] == ["a"], "a failed start adds no spec"
    finally:
        root.stop()


def test_child_restarting_errors_while_a_backoff_is_pending() -> None:
    root = sup.Supervisor.start([spec("w", backoff=sup.Backoff(min_delay=30.0, max_delay=30.0))])
    try:
        crash(root.child("w"))
        wait_until(lambda: root.which_children()[0].state == "restarting")
        with pytest.raises(sup.ChildRestarting):
            root.restart_child("w")
        with pytest.raises(sup.ChildRestarting):
            root.delete_child("w")
        root.terminate_child("w")  # cancels the pending restart
        assert root.which_children()[0].state == "terminated"
    finally:
        root.stop()


def test_which_children_and_count_children() -> None:
    root = sup.Supervisor.start(
        [
            spec("w1"),
            sup.Supervisor.child_spec("inner", [spec("x")]),
            spec("w2", restart="transient"),
        ]
    )
    try:
        infos = root.which_children()
        assert [(i.id, i.type, i.state) for i in infos] == [
            ("w1", "worker", "running"),
            ("inner", "supervisor", "running"),
            ("w2", "worker", "running"),
        ]
        assert all(i.ref is not None and i.ref.is_alive() for i in infos)
        assert root.count_children() == sup.ChildCounts(
            specs=3, active=3, supervisors=1, workers=2, restarting=0, abandoned=0
        )
        w2 = root.child("w2")
        w2.tell("stop")  # type: ignore[union-attr]
        wait_until(lambda: root.count_children().active == 2)
        counts = root.count_children()
        assert (counts.specs, counts.workers) == (3, 1)
        assert root.supervisor("inner").count_children().active == 1
    finally:
        root.stop()


# --- names survive restarts ----------------------------------------------------------------------


def test_a_name_resolves_to_the_new_actor_after_a_restart_and_never_to_a_dead_one() -> None:
    names = sup.Registry()
    root = sup.Supervisor.start([spec("w", name="the-worker")], registry=names)
    try:
        old = names.lookup("the-worker")
        assert names.ask("the-worker", 1, timeout=5.0) == ("w", 1)
        crash(old)
        wait_until(lambda: names.whereis("the-worker") not in (None, old))
        new = names.lookup("the-worker")
        assert new.is_alive()
        assert names.ask("the-worker", 2, timeout=5.0) == ("w", 2)
        root.terminate_child("w")
        assert names.whereis("the-worker") is None
        with pytest.raises(sup.NotRegistered, match="'the-worker'"):
            names.lookup("the-worker")
    finally:
        root.stop()


# --- restart intensity and escalation ------------------------------------------------------------


def test_intensity_exceeded_stops_children_in_reverse_and_tells_the_owner() -> None:
    journal = Journal()
    exits: list[sup.ExitReason] = []
    clock = FakeClock()
    root = sup.Supervisor.start(
        [spec("a", journal), spec("b", journal)],
        intensity=2,
        period=10.0,
        clock=clock,
        name="root",
        on_exit=exits.append,
    )
    for _ in range(2):
        old = root.child("b")
        crash(old)
        new_ref(root, "b", old)
        clock.advance(1.0)
    journal.clear()
    crash(root.child("b"))
    reason = root.wait(5.0)
    assert reason is not None
    assert reason.kind == "crash"
    assert isinstance(reason.exception, sup.RestartIntensityExceeded)
    assert "more than 2 restart(s) in 10 s" in str(reason.exception)
    assert journal.of("stop") == ["a"]
    wait_until(lambda: len(exits) == 1)
    assert exits == [reason]
    with pytest.raises(sup.SupervisorExited, match="RestartIntensityExceeded") as error:
        root.which_children()
    assert error.value.reason == reason


def test_restarts_outside_the_period_do_not_count() -> None:
    clock = FakeClock()
    root = sup.Supervisor.start([spec("w")], intensity=1, period=5.0, clock=clock)
    try:
        for _ in range(5):
            old = root.child("w")
            crash(old)
            new_ref(root, "w", old)
            clock.advance(5.01)
        assert root.is_alive
    finally:
        root.stop()


def test_intensity_zero_escalates_on_the_first_crash() -> None:
    root = sup.Supervisor.start([spec("w")], intensity=0)
    crash(root.child("w"))
    reason = root.wait(5.0)
    assert reason is not None
    assert isinstance(reason.exception, sup.RestartIntensityExceeded)


def test_escalation_through_three_levels() -> None:
    """leaf gives up on every worker crash; mid allows 1 restart of leaf; root allows 1 of mid."""
    clock = FakeClock()
    exits: list[sup.ExitReason] = []
    leaf = sup.Supervisor.child_spec("leaf", [spec("w")], intensity=0, clock=clock)
    mid = sup.Supervisor.child_spec("mid", [leaf], intensity=1, period=60.0, clock=clock)
    with EventLog() as events:
        root = sup.Supervisor.start(
            [mid, spec("bystander")],
            intensity=1,
            period=60.0,
            clock=clock,
            name="root",
            on_exit=exits.append,
        )

        def worker() -> Any:
            ref = root.supervisor("mid").supervisor("leaf").child("w")
            assert ref is not None
            return ref

        def crash_worker_and_wait_for_new_one() -> None:
            old = worker()
            crash(old)
            wait_until(lambda: _safe_worker(worker) not in (None, old))

        crash_worker_and_wait_for_new_one()  # leaf escalates; mid restarts leaf (1 <= 1)
        assert root.supervisor("mid").which_children()[0].restart_count == 1
        crash_worker_and_wait_for_new_one()  # leaf escalates; mid gives up; root restarts mid
        assert root.which_children()[0].restart_count == 1
        assert root.is_alive
        crash_worker_and_wait_for_new_one()  # leaf escalates; mid restarts leaf (fresh mid)
        crash(worker())  # leaf escalates, mid gives up, root gives up
        reason = root.wait(5.0)
    assert reason is not None
    assert isinstance(reason.exception, sup.RestartIntensityExceeded)
    assert reason.exception.supervisor == "root"
    wait_until(lambda: exits == [reason])
    escalated = [e.supervisor for e in events.of("escalated")]
    assert escalated == ["leaf", "leaf", "mid", "leaf", "leaf", "mid", "root"]


def _safe_worker(get: Any) -> Any:
    try:
        return get()
    except (sup.SupervisorError, AssertionError, pykka.ActorDeadError):
        return None


def test_a_child_that_fails_while_being_restarted_is_retried_within_intensity() -> None:
    # The next two starts fail, then starts succeed: counted, not timed, so a slow test
    # thread cannot let the failures run on into the intensity limit.
    failures_left = [0]
    lock = threading.Lock()

    def fail_start() -> bool:
        with lock:
            if failures_left[0] > 0:
                failures_left[0] -= 1
                return True
            return False

    root = sup.Supervisor.start(
        [spec("w", fail_start=fail_start)], intensity=10, period=60.0, name="retry"
    )
    try:
        with EventLog() as events:
            with lock:
                failures_left[0] = 2
            crash(root.child("w"))
            wait_until(lambda: len(events.of("restart_failed")) >= 2)
            wait_until(lambda: root.child("w") is not None)
        assert len(events.of("restart_failed")) == 2
        assert root.is_alive
        assert root.which_children()[0].restart_count == 1
    finally:
        root.stop()


def test_a_child_that_keeps_failing_its_restart_escalates() -> None:
    root = sup.Supervisor.start([spec("w", fail_start=lambda: False)], intensity=3, name="esc")
    failing = [False]
    # Swap in a spec that now always fails to start, as a bad deploy would.
    root.terminate_child("w")
    root.delete_child("w")
    root.start_child(spec("w", fail_start=lambda: failing[0]))
    failing[0] = True
    with EventLog() as events:
        crash(root.child("w"))
        reason = root.wait(5.0)
    assert reason is not None
    assert isinstance(reason.exception, sup.RestartIntensityExceeded)
    assert len(events.of("restart_failed")) == 3


# --- backoff -------------------------------------------------------------------------------------


def test_backoff_delays_restarts_exponentially() -> None:
    backoff = sup.Backoff(min_delay=0.05, max_delay=1.0, jitter=0.0)
    root = sup.Supervisor.start([spec("w", backoff=backoff)], intensity=10, period=60.0)
    try:
        waits = []
        for _ in range(3):
            old = root.child("w")
            began = time.monotonic()
            crash(old)
            new_ref(root, "w", old)
            waits.append(time.monotonic() - began)
        # Lower bounds only: a restart can be late on a busy machine, never early.
        assert waits[0] >= 0.05
        assert waits[1] >= 0.10
        assert waits[2] >= 0.20
    finally:
        root.stop()


def test_backoff_delay_formula() -> None:
    import random

    backoff = sup.Backoff(min_delay=0.1, max_delay=1.0, jitter=0.5)
    rng = random.Random(7)
    for attempt, base in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.0), (50, 1.0)]:
        delay = backoff.delay(attempt, rng)
        assert base * 0.5 <= delay <= base * 1.5
    with pytest.raises(ValueError, match="min_delay <= max_delay"):
        sup.Backoff(min_delay=2.0, max_delay=1.0)


# --- introspection and events --------------------------------------------------------------------


def test_tree_as_data_and_text() -> None:
    root = sup.Supervisor.start(
        [spec("w"), sup.Supervisor.child_spec("inner", [spec("x")], strategy="one_for_all")],
        name="root",
    )
    try:
        old = root.child("w")
        crash(old)
        new_ref(root, "w", old)
        tree = root.tree()
        assert [(n.id, n.kind, n.state) for n in tree.walk()] == [
            ("root", "supervisor", "running"),
            ("w", "worker", "running"),
            ("inner", "supervisor", "running"),
            ("x", "worker", "running"),
        ]
        w = tree.children[0]
        assert w.restart_count == 1
        assert w.last_exit is not None
        assert "ValueError" in w.last_exit
        text = tree.render()
        assert text.splitlines()[0] == "root (supervisor, one_for_one) running"
        assert "├── w (worker) running restarts=1 last_exit=crash: ValueError(" in text
        assert "└── inner (supervisor, one_for_all) running" in text
        assert "    └── x (worker) running" in text
        assert tree.to_dict()["children"][1]["children"][0]["id"] == "x"
    finally:
        root.stop()


def test_every_start_exit_restart_and_stop_is_an_event() -> None:
    with EventLog() as events:
        root = sup.Supervisor.start([spec("w")], name="ev")
        old = root.child("w")
        crash(old)
        new_ref(root, "w", old)
        root.stop()
    assert events.kinds("ev") == [
        "child_started",
        "supervisor_started",
        "child_exited",
        "child_started",
        "child_restarted",
        "child_terminated",
        "supervisor_stopped",
    ]
    exited = events.of("child_exited")[0]
    assert exited.child_id == "w"
    assert exited.reason is not None
    assert "ValueError" in exited.reason


def test_stopping_twice_and_calling_a_stopped_supervisor() -> None:
    root = sup.Supervisor.start([spec("w")], name="twice")
    assert root.stop() == sup.SHUTDOWN
    assert root.stop() == sup.SHUTDOWN
    with pytest.raises(sup.SupervisorExited, match="'twice' is not running"):
        root.start_child(spec("x"))


def test_supervisor_as_a_context_manager() -> None:
    with sup.Supervisor.start([spec("w")]) as root:
        ref = root.child("w")
        assert ref is not None
        assert ref.is_alive()
    assert not ref.is_alive()


def test_render_folds_long_runs_of_healthy_workers_only() -> None:
    root = sup.Supervisor.start([spec(f"w{i}") for i in range(12)], name="many")
    try:
        old = root.child("w5")
        crash(old)
        new_ref(root, "w5", old)
        lines = root.tree().render().splitlines()
        # 5 healthy before w5 and 6 after: neither run is longer than 8, so none folds.
        assert len(lines) == 13
        assert "w5 (worker) running restarts=1" in lines[6]
        assert len(root.tree().render(fold=0).splitlines()) == 13
        assert root.tree().render(fold=3).splitlines()[1] == "├── w0 .. w4: 5 workers running"
    finally:
        root.stop()


def test_log_level_is_validated() -> None:
    with pytest.raises(ValueError, match="level must be one of"):
        sup.set_log_level("loud")
    sup.set_log_level("info")
    sup.set_log_level("warning")
