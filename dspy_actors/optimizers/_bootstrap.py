"""``LabeledFewShot`` and ``BootstrapFewShot``.

Bootstrapping runs a teacher on training examples and keeps, as demos, the traces of the
runs the metric accepts. Examples are tried in parallel, a chunk of ``num_threads`` at a
time; successes are then taken in training-set order, so the demos do not depend on which
thread finished first.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

from dspy_actors import _settings as settings
from dspy_actors.evaluate._parallel import parallel_map
from dspy_actors.evaluate.metrics import Metric
from dspy_actors.optimizers._base import Optimizer, Plan, RunContext, Step, step_rng
from dspy_actors.optimizers._program import (
    DemoSets,
    demo_json,
    instrument,
    run_traced,
    trace_demos,
    with_demos,
)
from dspy_actors.primitives.example import Example
from dspy_actors.primitives.module import Module

__all__ = ["BootstrapError", "BootstrapFewShot", "LabeledFewShot", "bootstrap_demo_sets"]


class BootstrapError(RuntimeError):
    """More teacher runs failed with errors than ``max_errors`` allows."""


class LabeledFewShot(Optimizer):
    """Demos = ``k`` training examples (a seeded random sample, or the first ``k``)."""

    def __init__(self, k: int = 16, *, sample: bool = True, seed: int = 0) -> None:
        self.k = k
        self.sample = sample
        self.seed = seed

    def compile(
        self,
        student: Module,
        *,
        trainset: Sequence[Example],
        sample: bool | None = None,
        **kwargs: Any,
    ) -> Module:
        """As :meth:`Optimizer.compile`; ``sample`` (DSPy's compile argument) overrides
        the constructor's for this run: False takes the first ``k`` examples."""
        run = self if sample is None else self._with(sample=sample)
        return Optimizer.compile(run, student, trainset=trainset, **kwargs)

    def labeled_demos(
        self, student: Module, trainset: Sequence[Example], rng: random.Random
    ) -> DemoSets:
        demos: DemoSets = {}
        for name, _ in student.named_predictors():
            k = min(self.k, len(trainset))
            chosen = rng.sample(list(trainset), k) if self.sample else list(trainset)[:k]
            demos[name] = [demo_json(e) for e in chosen]
        return demos

    def plan(
        self,
        student: Module,
        trainset: Sequence[Example],
        valset: Sequence[Example] | None,
        ctx: RunContext,
    ) -> Plan:
        data = yield Step(
            "labeled",
            lambda: {"demos": self.labeled_demos(student, trainset, step_rng(ctx.seed, "labeled"))},
        )
        return with_demos(student.reset_copy(), data["demos"])


def bootstrap_demo_sets(
    *,
    student: Module,
    teacher: Module | None,
    trainset: Sequence[Example],
    metric: Metric | None,
    metric_threshold: float | None,
    max_bootstrapped_demos: int,
    max_labeled_demos: int,
    max_rounds: int,
    rng: random.Random,
    ctx: RunContext,
) -> dict[str, Any]:
    """Bootstrap demos for every predictor of ``student``; JSON ``{"demos", "bootstrapped"}``.

    As DSPy: a teacher with no demos of its own first gets ``max_labeled_demos`` labeled
    ones; round ``r > 0`` samples at temperature 1.0; labeled demos fill the rest, drawn
    from the examples that were not bootstrapped.
    """
    names = [n for n, _ in student.named_predictors()]
    base = (teacher or student).deepcopy()
    if max_labeled_demos > 0 and not any(p.demos for p in base.predictors()):
        labeled = LabeledFewShot(k=max_labeled_demos).labeled_demos(base, trainset, rng)
        base = with_demos(base, labeled)
    program = instrument(base)
    found: dict[int, dict[str, dict[str, Any]]] = {}
    order = list(range(len(trainset)))
    errors: list[str] = []
    start = tried = 0
    while start < len(order) and len(found) < max_bootstrapped_demos:
        ctx.check()
        # Try as many examples at once as should yield the demos still missing, at the
        # success rate seen so far (bounded by the threads): parallel, without trying
        # many more examples than a sequential bootstrap would.
        rate = max(len(found) / tried, 0.1) if tried else 1.0
        missing = max_bootstrapped_demos - len(found)
        chunk = max(1, min(ctx.num_threads, math.ceil(missing / rate)))
        todo = order[start : start + chunk]
        start += chunk
        tried += len(todo)
        for round_idx in range(max_rounds):
            if not todo:
                break

            def attempt(i: int, r: int = round_idx) -> tuple[bool, Any, str | None]:
                if r == 0:
                    ok, trace, err = run_traced(program, trainset[i], metric, metric_threshold)
                else:
                    with settings.context(temperature=1.0):
                        ok, trace, err = run_traced(program, trainset[i], metric, metric_threshold)
                error = None if err is None else f"{type(err).__name__}: {err}"
                return ok, trace_demos(trace) if ok else {}, error

            outcomes = parallel_map(
                attempt, todo, num_threads=ctx.num_threads, cancel=ctx.cancel, limiter=ctx.slots
            )
            for i, (ok, traced_demos, error) in zip(todo, outcomes, strict=True):
                if ok:
                    found[i] = traced_demos
                if error is not None:
                    errors.append(error)
            if ctx.max_errors is not None and len(errors) > ctx.max_errors:
                raise BootstrapError(
                    f"bootstrapping stopped: {len(errors)} runs failed "
                    f"(max_errors={ctx.max_errors}); last error: {errors[-1]}"
                )
            todo = [i for i in todo if i not in found]
    chosen = sorted(found)[:max_bootstrapped_demos]
    boot: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for i in chosen:
        for name, demo in found[i].items():
            if name in boot:
                boot[name].append(demo)
    rest = [e for i, e in enumerate(trainset) if i not in set(chosen)]
    rng.shuffle(rest)
    demos: DemoSets = {}
    for name in names:
        fill = rest[: max(0, max_labeled_demos - len(boot[name]))]
        demos[name] = boot[name][:max_bootstrapped_demos] + [demo_json(e) for e in fill]
    return {"demos": demos, "bootstrapped": chosen}


class BootstrapFewShot(Optimizer):
    """Demos from the teacher's successful runs (the student's copy if no teacher), topped
    up with labeled examples. ``metric_threshold``: a run counts as a success when the
    metric's score is at least this (else when the metric's result is truthy)."""

    def __init__(
        self,
        metric: Metric | None = None,
        *,
        teacher: Module | None = None,
        max_bootstrapped_demos: int = 4,
        max_labeled_demos: int = 16,
        max_rounds: int = 1,
        metric_threshold: float | None = None,
        num_threads: int = 8,
        max_errors: int | None = None,
        seed: int = 0,
    ) -> None:
        self.metric = metric
        self.teacher = teacher
        self.max_bootstrapped_demos = max_bootstrapped_demos
        self.max_labeled_demos = max_labeled_demos
        self.max_rounds = max_rounds
        self.metric_threshold = metric_threshold
        self.num_threads = num_threads
        if max_errors is not None:  # None: the default bound, as DSPy's settings.max_errors
            self.max_errors = max_errors
        self.seed = seed

    def demo_sets(
        self, student: Module, trainset: Sequence[Example], rng: random.Random, ctx: RunContext
    ) -> dict[str, Any]:
        return bootstrap_demo_sets(
            student=student,
            teacher=self.teacher,
            trainset=trainset,
            metric=self.metric,
            metric_threshold=self.metric_threshold,
            max_bootstrapped_demos=self.max_bootstrapped_demos,
            max_labeled_demos=self.max_labeled_demos,
            max_rounds=self.max_rounds,
            rng=rng,
            ctx=ctx,
        )

    def plan(
        self,
        student: Module,
        trainset: Sequence[Example],
        valset: Sequence[Example] | None,
        ctx: RunContext,
    ) -> Plan:
        data = yield Step(
            "bootstrap",
            lambda: self.demo_sets(student, trainset, step_rng(ctx.seed, "bootstrap"), ctx),
        )
        return with_demos(student.reset_copy(), data["demos"])
