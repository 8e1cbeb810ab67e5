"""The step protocol: groups run in waves, every step is checkpointed once, resumes skip
finished steps, results go through JSON, and a cancel stops between steps."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from functools import partial
from typing import Any

import pytest

import dspy_actors as dsa
from dspy_actors.optimizers import (
    Cancelled,
    MemoryCheckpointer,
    Optimizer,
    Plan,
    PlanRunner,
    RunContext,
    Step,
    StepEvent,
    step_rng,
)
from dspy_actors.primitives.example import Example
from dspy_actors.primitives.module import Module


class Counting(Optimizer):
    """Five independent steps, then one that sums them; counts how often each step ran."""

    def __init__(self) -> None:
        self.runs: dict[str, int] = {}
        self.lock = threading.Lock()

    def _work(self, name: str, value: Any) -> dict[str, Any]:
        with self.lock:
            self.runs[name] = self.runs.get(name, 0) + 1
        return {"value": value}

    def plan(
        self,
        student: Module,
        trainset: Sequence[Example],
        valset: Sequence[Example] | None,
        ctx: RunContext,
    ) -> Plan:
        group = [
            Step(f"part/{i}", partial(self._work, f"part/{i}", step_rng(ctx.seed, str(i)).random()))
            for i in range(5)
        ]
        parts: list[dict[str, Any]] = yield group
        total = yield Step("sum", lambda: self._work("sum", (1, sum(p["value"] for p in parts))))
        program = student.deepcopy()
        program.total = total["value"]  # type: ignore[attr-defined]
        return program


def _runner(
    opt: Counting, ckpt: MemoryCheckpointer, events: list[StepEvent], seed: int = 0
) -> PlanRunner:
    ctx = RunContext(seed=seed, step_concurrency=2)
    plan = opt.plan(dsa.Predict("q -> a"), [], None, ctx)
    return PlanRunner(plan, ckpt, events.append, ctx=ctx)


def test_groups_run_in_waves_and_results_go_through_json() -> None:
    opt, ckpt = Counting(), MemoryCheckpointer()
    events: list[StepEvent] = []
    runner = _runner(opt, ckpt, events)
    waves = 0
    while not runner.advance():
        waves += 1
    assert waves == 3  # parts in waves of 2, 2, 1; then the sum finishes the plan
    assert [e.step for e in events] == [f"part/{i}" for i in range(5)] + ["sum"]
    assert runner.result is not None
    assert runner.result.total[0] == 1  # type: ignore[attr-defined]
    assert isinstance(runner.result.total, list)  # type: ignore[attr-defined]  # a tuple went through JSON
    assert all(n == 1 for n in opt.runs.values())


def test_resume_skips_finished_steps_and_reaches_the_same_result() -> None:
    opt, ckpt = Counting(), MemoryCheckpointer()
    events: list[StepEvent] = []
    first = _runner(opt, ckpt, events, seed=7)
    first.advance()  # two parts done, then the process "dies"
    first.close()
    assert set(ckpt.steps) == {"part/0", "part/1"}
    resumed_events: list[StepEvent] = []
    resumed = _runner(opt, ckpt, resumed_events, seed=7)
    while not resumed.advance():
        pass
    fresh = _runner(Counting(), MemoryCheckpointer(), [], seed=7)
    while not fresh.advance():
        pass
    assert resumed.result.total == fresh.result.total  # type: ignore[union-attr]
    assert [e.restored for e in resumed_events[:2]] == [True, True]
    assert all(n == 1 for n in opt.runs.values())  # no step ran twice


def test_cancel_stops_before_the_next_step() -> None:
    opt, ckpt = Counting(), MemoryCheckpointer()
    ctx = RunContext(step_concurrency=1)
    runner = PlanRunner(opt.plan(dsa.Predict("q -> a"), [], None, ctx), ckpt, ctx=ctx)
    runner.advance()
    ctx.cancel.set()
    with pytest.raises(Cancelled):
        runner.advance()
    assert list(ckpt.steps) == ["part/0"]
