"""(3) A poison input is quarantined without escalating the tree. (4) A crash storm beyond
the restart intensity escalates as designed, and the app tells its owner."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

import dspy_actors as dsa
import supervisors
from dspy_actors.runtime._errors import DeadlineExceeded, ModuleUnavailable
from dspy_actors.testing import CallLedger, assert_all_accounted, assert_tree_healthy, wait_until
from tests.reliability.programs import Poison, StartApp


@pytest.fixture
def supervision_events() -> Iterator[list[supervisors.SupervisorEvent]]:
    seen: list[supervisors.SupervisorEvent] = []
    lock = threading.Lock()

    def record(event: supervisors.SupervisorEvent) -> None:
        with lock:
            seen.append(event)

    unsubscribe = supervisors.subscribe(record)
    yield seen
    unsubscribe()


def _children(handle: supervisors.Supervisor) -> dict[str, supervisors.ChildInfo]:
    return {info.id: info for info in handle.which_children()}


def test_poison_input_is_dead_lettered_without_escalating(
    start_app: StartApp, supervision_events: list[supervisors.SupervisorEvent]
) -> None:
    app = start_app(poison_threshold=3)
    published: list[Any] = []
    app.subscribe("dead_letter", published.append)
    qa = app.serve("qa", Poison(), idempotent=True)
    ledger = CallLedger(qa, hang_after_s=30.0)
    before = Poison.crashes
    # Healthy traffic around the poison input keeps being answered.
    for i in range(5):
        ledger.call(question=f"healthy {i}")
    with pytest.raises(dsa.DeadLettered) as quarantined:
        ledger.call(question="poison")
    assert "crashed module 'qa'" in str(quarantined.value)
    assert Poison.crashes - before == 3, "exactly poison_threshold crashes, then quarantine"
    with pytest.raises(dsa.DeadLettered):  # refused at once: no further crash
        ledger.call(question="poison")
    assert Poison.crashes - before == 3
    for i in range(5):
        ledger.call(question=f"after {i}")
    assert_all_accounted(ledger)
    assert ledger.answered == 10
    assert ledger.errors() == {"DeadLettered": 2}

    letters = app.dead_letters("qa")
    assert [dict(letter.inputs) for letter in letters] == [{"question": "poison"}]
    (letter,) = letters
    assert letter.exception_type.endswith("RuntimeError")
    assert "cannot digest this input" in letter.traceback
    assert letter.id in str(quarantined.value)  # the caller can find it
    assert app.events.flush(5.0)
    assert [e.dead_letter_id for e in published] == [letter.id]
    # Nothing escalated: the program's subtree restarted its entry actor 3 times, no more.
    assert not [e for e in supervision_events if e.kind == "escalated"]
    program = app.root.supervisor("modules").supervisor("qa@v1")
    assert sum(info.restart_count for info in program.which_children()) == 3
    assert _children(app.root.supervisor("modules"))["qa@v1"].restart_count == 0
    assert_tree_healthy(app, within_s=10.0)
    # Replaying a still-poisonous input runs it again and quarantines it again.
    with pytest.raises(dsa.DeadLettered):
        app.replay_dead_letter(letter.id)
    assert app.root.is_alive


class Storm(dsa.Module):
    """A composite whose forward crashes on every input (a bug that no input avoids)."""

    def __init__(self) -> None:
        super().__init__()
        self.qa = dsa.Predict("question -> answer")

    def forward(self, question: str) -> Any:
        raise RuntimeError(f"bug triggered by {question!r}")


def test_crash_storm_escalates_the_program_subtree_and_the_modules_supervisor_restarts_it(
    start_app: StartApp, supervision_events: list[supervisors.SupervisorEvent]
) -> None:
    app = start_app()
    restarts: list[Any] = []
    app.subscribe("runtime.restart", restarts.append)
    storm = app.serve("storm", Storm(), intensity=10)  # (the default rides out more)
    healthy = app.serve("healthy", dsa.Predict("question -> answer"))
    ledger = CallLedger(storm, hang_after_s=30.0)
    # Distinct inputs (none is poison on its own), more crashes than 10 in 5 s.
    for i in range(16):
        try:
            ledger.call(question=f"storm {i}")
        except dsa.ModuleCrashed:
            pass
        except dsa.ModuleUnavailable:
            pass
    assert_all_accounted(ledger)
    assert ledger.answered == 0
    assert set(ledger.errors()) <= {"ModuleCrashed", "ModuleUnavailable"}

    # As designed: the program's supervisor (intensity 10 in 5 s) gave up and crashed with
    # RestartIntensityExceeded; its parent, `modules`, restarted the whole program subtree.
    escalated = [e for e in supervision_events if e.kind == "escalated"]
    assert escalated, "the program subtree never escalated"
    assert {e.supervisor for e in escalated} == {f"{app.name}/storm@v1"}
    assert all("gave up: more than 10 restart(s) in 5 s" in str(e.reason) for e in escalated), [
        str(e.reason) for e in escalated
    ]
    modules = _children(app.root.supervisor("modules"))
    assert modules["storm@v1"].restart_count >= 1
    assert "RestartIntensityExceeded" in str(modules["storm@v1"].last_exit)
    assert modules["healthy@v1"].restart_count == 0
    # The owner is told: a runtime.restart event names the restarted program.
    assert app.events.flush(10.0)
    assert any(
        r.supervisor == f"{app.name}/modules" and r.child_id == "storm@v1" for r in restarts
    ), restarts
    # Escalation stopped there: the root and the other program are untouched.
    assert app.root.is_alive
    assert healthy.call(question="still there?").answer
    assert_tree_healthy(app, within_s=10.0)


class Fragile(dsa.Module):
    """A leaf module that cannot be started again once ``broken`` is set."""

    broken = False
    failed_starts = 0

    def forward(self, question: str) -> Any:
        return dsa.Prediction(answer=question)

    def deepcopy(self) -> Fragile:
        if Fragile.broken:
            Fragile.failed_starts += 1
            raise RuntimeError("this module cannot start")
        return super().deepcopy()


def test_a_program_that_cannot_restart_does_not_take_the_other_programs_down(
    start_app: StartApp,
) -> None:
    app = start_app()
    fragile = app.serve("fragile", Fragile())
    healthy = app.serve("healthy", dsa.Predict("question -> answer"))
    assert fragile.call(question="hi").answer == "hi"
    Fragile.broken, Fragile.failed_starts = True, 0
    try:
        supervisors.kill(app.registry.lookup(f"{app.name}/fragile@v1/"))
        # Several restarts failed: a storm, were the failures counted as crashes, would
        # have reached `modules` by now. The program retries with backoff instead, and
        # `modules` never reaches its intensity.
        wait_until(lambda: Fragile.failed_starts >= 3, timeout=60.0, what="3 failed restarts")
        assert _children(app.root)["modules"].restart_count == 0
        assert healthy.call_with({"question": "still there?"}, timeout=3.0).answer
        with pytest.raises((ModuleUnavailable, DeadlineExceeded)):
            fragile.call_with({"question": "broken"}, timeout=0.5)
        Fragile.broken = False
        # Fixed: its next backed-off restart succeeds (delays are capped at 2 s).
        assert fragile.call_with({"question": "back"}, timeout=10.0).answer == "back"
    finally:
        Fragile.broken = False
