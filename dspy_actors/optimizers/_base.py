"""Optimizers as resumable runs: a plan of named steps whose results are JSON data.

An optimizer's :meth:`Optimizer.plan` is a generator. It yields :class:`Step` objects (a
name and a function doing the work, LM calls included) and is sent back each step's result
as JSON data; when done it returns the compiled program. :func:`execute` (or
:class:`PlanRunner`, one step at a time) drives it through a :class:`Checkpointer`:

* a step whose result the checkpointer already holds is not run again (no LM calls), its
  saved result is sent instead;
* every result goes through a JSON round trip before the plan sees it, so a fresh run and a
  resumed one see identical data;
* randomness is seeded per step (:func:`step_rng`), never carried from step to step, so
  skipping steps does not shift anyone's random numbers.

With the same seed and a deterministic LM, a resumed run therefore reaches the same program
as an uninterrupted one. In-process, :class:`NullCheckpointer` keeps nothing.
"""

from __future__ import annotations

import copy
import json
import random
import threading
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, Self

from dspy_actors.distributed._cluster import app_cluster_executor
from dspy_actors.evaluate._executor import use_executor
from dspy_actors.evaluate._parallel import Cancelled, parallel_map
from dspy_actors.primitives.example import Example
from dspy_actors.primitives.module import Module
from dspy_actors.runtime._run_plan import AttemptState, RunSetup

__all__ = [
    "Cancelled",
    "Checkpointer",
    "MemoryCheckpointer",
    "NullCheckpointer",
    "Optimizer",
    "Plan",
    "PlanAttempt",
    "PlanRunner",
    "RunContext",
    "Step",
    "StepEvent",
    "execute",
    "step_rng",
]

StepData = dict[str, Any]


@dataclass(frozen=True)
class Step:
    """One unit of work of a plan: ``run()`` returns JSON-compatible data."""

    name: str
    run: Callable[[], StepData]


Plan = Generator["Step | list[Step]", Any, Module]
"""Yield a Step to get its data back; yield a list of Steps (independent of each other) to
run them in parallel and get the list of their data back, in the same order."""


class Checkpointer(Protocol):
    """Where finished steps' results are kept between attempts of a run."""

    def load(self, step: str) -> StepData | None: ...

    def save(self, step: str, data: StepData) -> None: ...


class NullCheckpointer:
    """Keeps nothing: every step runs (in-process ``compile``)."""

    def load(self, step: str) -> StepData | None:
        return None

    def save(self, step: str, data: StepData) -> None:
        return None


class MemoryCheckpointer:
    """Keeps step results in a dict (tests; one process)."""

    def __init__(self) -> None:
        self.steps: dict[str, StepData] = {}
        self._lock = threading.Lock()

    def load(self, step: str) -> StepData | None:
        with self._lock:
            found = self.steps.get(step)
        return None if found is None else json.loads(json.dumps(found))

    def save(self, step: str, data: StepData) -> None:
        with self._lock:
            self.steps[step] = json.loads(json.dumps(data))


@dataclass(frozen=True)
class StepEvent:
    """Reported after each step: its name, whether it was restored from a checkpoint,
    how many steps are finished, and the best score so far (if the plan knows one)."""

    step: str
    restored: bool
    completed: int
    data: StepData


@dataclass
class RunContext:
    """What a plan runs with: the seed; ``num_threads``, the bound on LM-calling work in
    flight across the whole run (``slots``, shared by every parallel step and evaluation);
    ``step_concurrency``, how many steps of a parallel group run at once; the cancel flag;
    ``max_errors``, how many failed examples (LM or program errors) one evaluation or one
    bootstrap tolerates before the step fails (as DSPy: an outage must not quietly yield a
    zero-shot "winner"; None tolerates any number).
    """

    seed: int = 0
    num_threads: int = 8
    cancel: threading.Event = field(default_factory=threading.Event)
    step_concurrency: int = 8
    max_errors: int | None = 10
    slots: threading.Semaphore = field(init=False)

    def __post_init__(self) -> None:
        self.slots = threading.BoundedSemaphore(max(1, self.num_threads))

    def __reduce__(self) -> tuple[Any, ...]:
        # In another process (a Ray worker running a step's examples) the context is a
        # local one: its own cancel flag and slots. The driver stops remote work by
        # cancelling its tasks, and a lock cannot cross processes anyway.
        return (
            _local_context,
            (self.seed, self.num_threads, self.step_concurrency, self.max_errors),
        )

    def check(self) -> None:
        """Raise :class:`Cancelled` if the run was cancelled."""
        if self.cancel.is_set():
            raise Cancelled("the run was cancelled")


def _local_context(
    seed: int, num_threads: int, step_concurrency: int, max_errors: int | None
) -> RunContext:
    return RunContext(
        seed=seed, num_threads=num_threads, step_concurrency=step_concurrency,
        max_errors=max_errors,
    )  # fmt: skip


def step_rng(seed: int, step: str) -> random.Random:
    """A random generator for one step, from the run's seed and the step's name only."""
    return random.Random(f"{seed}:{step}")


class PlanRunner:
    """Drives a plan one step (or one parallel group of steps) at a time: what a run actor
    does per message. Each step is checkpointed as soon as it finishes."""

    def __init__(
        self,
        plan: Plan,
        checkpointer: Checkpointer | None = None,
        on_step: Callable[[StepEvent], None] | None = None,
        *,
        ctx: RunContext | None = None,
    ) -> None:
        self._plan = plan
        self._checkpointer = checkpointer or NullCheckpointer()
        self._on_step = on_step
        self._ctx = ctx or RunContext()
        self._next: Step | list[Step] | None = None
        self._saved: list[StepData | None] | None = None
        self._started = False
        self.completed = 0
        self.done = False
        self.result: Module | None = None

    def advance(self) -> bool:
        """Run (or restore) the next step, or the next wave of at most
        ``ctx.step_concurrency`` steps of a parallel group; True once the plan has returned
        its program. Between two calls nothing is in flight, so a caller may stop there."""
        if self.done:
            return True
        try:
            if not self._started:
                self._started = True
                self._next = next(self._plan)
            current = self._next
            assert current is not None
            group = current if isinstance(current, list) else [current]
            if self._saved is None:
                self._saved = [self._checkpointer.load(s.name) for s in group]
                for step, data in zip(group, self._saved, strict=True):
                    if data is not None:
                        self._report(step, True, data)
            saved = self._saved
            todo = [i for i, d in enumerate(saved) if d is None][: self._ctx.step_concurrency]
            if todo:
                ran = parallel_map(
                    lambda i: self._run_step(group[i]),
                    todo,
                    num_threads=self._ctx.step_concurrency,
                    cancel=self._ctx.cancel,
                    thread_name_prefix="dsa-steps",
                    local=True,  # steps checkpoint here; their examples may go elsewhere
                )
                for i, fresh in zip(todo, ran, strict=True):
                    saved[i] = fresh
                    self._report(group[i], False, fresh)
            if any(d is None for d in saved):
                return False
            results = [d for d in saved if d is not None]
            self._saved = None
            self._next = self._plan.send(results if isinstance(current, list) else results[0])
        except StopIteration as stop:
            self.result = stop.value
            self.done = True
        return self.done

    def _report(self, step: Step, restored: bool, data: StepData) -> None:
        self.completed += 1
        if self._on_step is not None:
            self._on_step(StepEvent(step.name, restored, self.completed, data))

    def _run_step(self, step: Step) -> StepData:
        self._ctx.check()
        data: StepData = json.loads(json.dumps(step.run()))
        self._checkpointer.save(step.name, data)
        return data

    def close(self) -> None:
        self._plan.close()


def execute(
    plan: Plan,
    checkpointer: Checkpointer | None = None,
    on_step: Callable[[StepEvent], None] | None = None,
    ctx: RunContext | None = None,
) -> Module:
    """Run a plan to the end and return its program."""
    runner = PlanRunner(plan, checkpointer, on_step, ctx=ctx)
    while not runner.advance():
        pass
    assert runner.result is not None
    return runner.result


class PlanAttempt:
    """One attempt of a supervised run (runtime/_run_plan.py's ``RunAttempt``): the plan
    driven by a :class:`PlanRunner`, its examples sent to the run's executor, a cancelled
    evaluation reported as ``"cancelled"``."""

    def __init__(self, runner: PlanRunner, executor: Any) -> None:
        self._runner = runner
        self._executor = executor

    def advance(self) -> AttemptState:
        try:
            with use_executor(self._executor):
                return "done" if self._runner.advance() else "more"
        except Cancelled:
            return "cancelled"

    def result(self) -> Module:
        result = self._runner.result
        if result is None:
            raise RuntimeError("the run's plan has not returned its program yet")
        return result

    def close(self) -> None:
        self._runner.close()


class Optimizer:
    """Base of the optimizers: ``compile(student, trainset=..., valset=...)`` runs
    :meth:`plan` in-process. Subclasses implement :meth:`plan`."""

    seed: int = 0
    num_threads: int = 8
    step_concurrency: int = 8
    max_errors: int | None = 10

    def plan(
        self,
        student: Module,
        trainset: Sequence[Example],
        valset: Sequence[Example] | None,
        ctx: RunContext,
    ) -> Plan:
        raise NotImplementedError

    def _with(self, **changes: Any) -> Self:
        result: Self = _with_settings(self, **changes)
        return result

    def run_context(self, seed: int, cancel: threading.Event | None = None) -> RunContext:
        """The context a run of this optimizer gets (its thread bounds and error limit)."""
        return RunContext(
            seed=seed,
            num_threads=self.num_threads,
            cancel=cancel if cancel is not None else threading.Event(),
            step_concurrency=self.step_concurrency,
            max_errors=self.max_errors,
        )

    def start_attempt(self, setup: RunSetup) -> PlanAttempt:
        """An attempt of a supervised run (``app.optimize``; runtime/_run_plan.py): the plan
        from the run's seed, checkpointed by the run; its examples go to the run's executor,
        else the app's Ray cluster (``ray_address``), else local threads."""
        ctx = self.run_context(setup.seed, setup.cancel)
        plan = self.plan(setup.student, setup.trainset, setup.valset, ctx)
        runner = PlanRunner(plan, setup.checkpointer, setup.on_step, ctx=ctx)
        executor = setup.executor
        if executor is None:
            executor = app_cluster_executor(setup.app, setup.app_config)
        return PlanAttempt(runner, executor)

    def compile(
        self,
        student: Module,
        *,
        trainset: Sequence[Example],
        teacher: Module | None = None,
        valset: Sequence[Example] | None = None,
        seed: int | None = None,
        checkpointer: Checkpointer | None = None,
        on_step: Callable[[StepEvent], None] | None = None,
    ) -> Module:
        """Optimize ``student`` and return the compiled copy (``student`` is not changed).
        ``teacher`` (as in DSPy's ``compile(student, teacher=..., trainset=...)``) runs in
        place of the constructor's teacher, for optimizers that bootstrap from one."""
        if teacher is not None:
            return self._with(teacher=teacher).compile(
                student,
                trainset=trainset,
                valset=valset,
                seed=seed,
                checkpointer=checkpointer,
                on_step=on_step,
            )
        ctx = self.run_context(self.seed if seed is None else seed)
        return execute(
            self.plan(student, list(trainset), _maybe_list(valset), ctx),
            checkpointer,
            on_step,
            ctx,
        )


def _with_settings(optimizer: Any, **changes: Any) -> Any:
    """A shallow copy of ``optimizer`` with some attributes changed (a compile argument
    that overrides a constructor setting for one run); a clear error for a setting the
    optimizer does not have."""
    for name in changes:
        if not hasattr(optimizer, name):
            raise TypeError(
                f"{type(optimizer).__name__}.compile() got {name}=, which "
                f"{type(optimizer).__name__} does not use"
            )
    run = copy.copy(optimizer)
    for name, value in changes.items():
        setattr(run, name, value)
    return run


def _maybe_list(items: Sequence[Example] | None) -> list[Example] | None:
    return None if items is None else list(items)
