"""DynamicSupervisor (max_children, extra args) and TaskSupervisor (futures, bounds)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

import supervisors as sup
from dspy_actors.testing._polling import wait_until
from tests.supervisors.actors import Journal, Worker, crash, new_ref, spec


class Tagged(sup.SupervisedActor):
    def __init__(self, tag: str, value: int) -> None:
        super().__init__()
        self.tag, self.value = tag, value

    def on_receive(self, message: Any) -> Any:
        return (self.tag, self.value, message)


def test_dynamic_children_get_extra_args_first() -> None:
    dyn = sup.DynamicSupervisor.start(extra_args=("shared",))
    try:
        ref = dyn.start_child(sup.ChildSpec("one", Tagged, args=(1,)))
        assert sup.ask(ref, "hi", timeout=5.0) == ("shared", 1, "hi")
    finally:
        dyn.stop()


def test_max_children_is_enforced() -> None:
    dyn = sup.DynamicSupervisor.start(max_children=2, name="dyn")
    try:
        dyn.start_child(spec("a"))
        dyn.start_child(spec("b"))
        with pytest.raises(sup.MaxChildrenReached, match="max_children=2"):
            dyn.start_child(spec("c"))
        dyn.terminate_child("a")
        dyn.start_child(spec("c"))
        assert [i.id for i in dyn.which_children()] == ["b", "c"]
    finally:
        dyn.stop()


def test_start_children_starts_a_batch_in_order_with_names() -> None:
    journal = Journal()
    dyn = sup.DynamicSupervisor.start(name="batch")
    try:
        specs = [spec(f"w{i}", journal, name=f"batch-w{i}") for i in range(50)]
        refs = dyn.start_children(specs)
        assert journal.of("start") == [f"w{i}" for i in range(50)]
        assert [i.id for i in dyn.which_children()] == [f"w{i}" for i in range(50)]
        assert [i.ref for i in dyn.which_children()] == refs
        assert sup.registry.ask("batch-w49", "hi", timeout=5.0) == ("w49", "hi")
        # Batch children are ordinary children: they restart under their names.
        crash(refs[7])
        new_ref(dyn, "w7", refs[7])
        assert sup.registry.ask("batch-w7", "again", timeout=5.0) == ("w7", "again")
    finally:
        dyn.stop()


def test_start_children_is_all_or_none_when_one_fails_to_start() -> None:
    journal = Journal()
    dyn = sup.DynamicSupervisor.start(name="batch")
    try:
        dyn.start_child(spec("before"))
        specs = [
            spec("a", journal, name="batch-a"),
            spec("b", journal),
            spec("bad", journal, fail_start=lambda: True),
            spec("c", journal),
        ]
        with pytest.raises(sup.StartError, match="'bad' failed to start") as caught:
            dyn.start_children(specs)
        assert caught.value.child_id == "bad"
        assert journal.of("start") == ["a", "b"]
        assert journal.of("stop") == ["b", "a"]  # the ones it started, stopped in reverse
        assert [i.id for i in dyn.which_children()] == ["before"]
        assert sup.registry.whereis("batch-a") is None
        assert dyn.count_children().active == 1
    finally:
        dyn.stop()


def test_start_children_rejects_bad_batches_before_starting_anything() -> None:
    journal = Journal()
    dyn = sup.DynamicSupervisor.start(name="batch", max_children=3)
    try:
        dyn.start_child(spec("x"))
        with pytest.raises(ValueError, match="'dup' appears twice"):
            dyn.start_children([spec("dup", journal), spec("dup", journal)])
        with pytest.raises(sup.MaxChildrenReached, match="max_children=3"):
            dyn.start_children([spec("a", journal), spec("b", journal), spec("c", journal)])
        with pytest.raises(sup.AlreadyStarted):
            dyn.start_children([spec("a", journal), spec("x", journal)])
        with pytest.raises(TypeError, match="expected ChildSpec"):
            dyn.start_children(["not a spec"])  # type: ignore[list-item]
        assert journal.of("start") == ["a"]  # only the AlreadyStarted batch got going
        assert journal.of("stop") == ["a"]
        assert [i.id for i in dyn.which_children()] == ["x"]
        assert dyn.start_children([]) == []
    finally:
        dyn.stop()


def test_static_supervisor_start_children_appends_in_order() -> None:
    root = sup.Supervisor.start([spec("first")], strategy="rest_for_one")
    try:
        root.start_children([spec("second"), spec("third")])
        assert [i.id for i in root.which_children()] == ["first", "second", "third"]
        assert root.count_children().active == 3
    finally:
        root.stop()


def test_dynamic_children_restart_and_are_removed_when_done() -> None:
    dyn = sup.DynamicSupervisor.start()
    try:
        dyn.start_child(spec("perm"))
        dyn.start_child(spec("trans", restart="transient"))
        dyn.start_child(spec("temp", restart="temporary"))
        old = dyn.child("perm")
        crash(old)
        new_ref(dyn, "perm", old)
        dyn.child("trans").tell("stop")  # type: ignore[union-attr]
        crash(dyn.child("temp"))
        wait_until(lambda: [i.id for i in dyn.which_children()] == ["perm"])
        dyn.terminate_child("perm")
        assert dyn.which_children() == []
    finally:
        dyn.stop()


def test_nested_dynamic_supervisor() -> None:
    root = sup.Supervisor.start([sup.DynamicSupervisor.child_spec("pool", max_children=5)])
    try:
        pool = root.supervisor("pool")
        ref = pool.start_child(spec("w"))
        assert sup.ask(ref, 1, timeout=5.0) == ("w", 1)
        assert [n.id for n in root.tree().walk()] == ["supervisor", "pool", "w"]
    finally:
        root.stop()


def test_tasks_return_results_and_carry_exceptions() -> None:
    tasks = sup.TaskSupervisor.start()
    try:
        ok = tasks.submit(lambda a, b: a + b, 2, 3)
        boom = tasks.submit(lambda: 1 / 0)
        assert ok.result(timeout=5.0) == 5
        with pytest.raises(ZeroDivisionError):
            boom.result(timeout=5.0)
        wait_until(lambda: tasks.count_children().specs == 0)
    finally:
        tasks.stop()


def test_task_concurrency_is_bounded_and_the_queue_too() -> None:
    tasks = sup.TaskSupervisor.start(max_concurrency=2, max_pending=3)
    running = 0
    peak = 0
    lock = threading.Lock()
    release = threading.Event()

    def job(n: int) -> int:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        release.wait(5.0)
        with lock:
            running -= 1
        return n

    try:
        futures = [tasks.submit(job, n) for n in range(5)]
        with pytest.raises(sup.TaskQueueFull, match="2 tasks running and 3 waiting"):
            tasks.submit(job, 99)
        wait_until(lambda: running == 2)
        release.set()
        assert [f.result(timeout=5.0) for f in futures] == [0, 1, 2, 3, 4]
        assert peak == 2
    finally:
        release.set()
        tasks.stop()


def test_transient_tasks_are_rerun_after_a_crash() -> None:
    attempts: list[int] = []

    def flaky() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionError("flaky")
        return "done"

    tasks = sup.TaskSupervisor.start(intensity=5)
    try:
        future = tasks.submit_with(flaky, restart="transient")
        assert future.result(timeout=5.0) == "done"
        assert len(attempts) == 3
        with pytest.raises(ValueError, match="temporary' or 'transient'"):
            tasks.submit_with(flaky, restart="permanent")
    finally:
        tasks.stop()


def test_stopping_a_task_supervisor_resolves_every_future() -> None:
    tasks = sup.TaskSupervisor.start(max_concurrency=1, task_shutdown=2.0)
    started = threading.Event()

    def slow() -> str:
        started.set()
        time.sleep(0.2)
        return "finished"

    running = tasks.submit(slow)
    waiting = [tasks.submit(lambda: "never") for _ in range(3)]
    assert started.wait(5.0)
    tasks.stop()
    for future in [running, *waiting]:
        assert future.done()
    with pytest.raises(sup.SupervisorExited):
        waiting[0].result(timeout=0)


def test_a_task_crash_storm_escalates_and_fails_every_future() -> None:
    exits: list[sup.ExitReason] = []
    tasks = sup.TaskSupervisor.start(intensity=2, period=60.0, on_exit=exits.append)

    def always_fails() -> None:
        raise RuntimeError("bad task")

    future = tasks.submit_with(always_fails, restart="transient")
    with pytest.raises((RuntimeError, sup.SupervisorExited)):
        future.result(timeout=5.0)
    reason = tasks.wait(5.0)
    assert reason is not None
    assert isinstance(reason.exception, sup.RestartIntensityExceeded)


def test_worker_plain_start_still_works() -> None:
    ref = Worker.start()
    assert sup.ask(ref, 3, timeout=5.0) == ("worker", 3)
    ref.stop(block=True, timeout=5.0)
