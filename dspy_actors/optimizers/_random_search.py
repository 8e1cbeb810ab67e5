"""``BootstrapFewShotWithRandomSearch``: bootstrap many demo sets, keep the best on valset.

Candidates, as in DSPy: the zero-shot program, a labeled few-shot one, a bootstrap over the
training set in order, then ``num_candidate_programs`` bootstraps over seeded shuffles of
it with a random number of demos. Each candidate is one step (build and evaluate), and the
candidates run as one parallel group (their LM work bounded together by ``num_threads``),
so a resumed run skips the candidates it has already scored. With ``stop_at_score`` the
first candidate (in order) reaching it wins; the others are still computed.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

from dspy_actors.evaluate.metrics import Metric
from dspy_actors.optimizers._base import Optimizer, Plan, RunContext, Step, step_rng
from dspy_actors.optimizers._bootstrap import LabeledFewShot, bootstrap_demo_sets
from dspy_actors.optimizers._program import DemoSets, score_program, with_demos
from dspy_actors.primitives.example import Example
from dspy_actors.primitives.module import Module

__all__ = ["BootstrapFewShotWithRandomSearch"]


class BootstrapFewShotWithRandomSearch(Optimizer):
    """Random search over bootstrapped demo sets; see the module docstring."""

    def __init__(
        self,
        metric: Metric,
        *,
        teacher: Module | None = None,
        max_bootstrapped_demos: int = 4,
        max_labeled_demos: int = 16,
        max_rounds: int = 1,
        num_candidate_programs: int = 16,
        num_threads: int = 8,
        stop_at_score: float | None = None,
        metric_threshold: float | None = None,
        min_num_samples: int = 1,
        max_errors: int | None = None,
        seed: int = 0,
    ) -> None:
        if max_errors is not None:  # None: the default bound, as DSPy's settings.max_errors
            self.max_errors = max_errors
        self.metric = metric
        self.teacher = teacher
        self.max_bootstrapped_demos = max_bootstrapped_demos
        self.max_labeled_demos = max_labeled_demos
        self.max_rounds = max_rounds
        self.num_candidate_programs = num_candidate_programs
        self.num_threads = num_threads
        self.stop_at_score = stop_at_score
        self.metric_threshold = metric_threshold
        self.min_num_samples = min_num_samples
        self.seed = seed

    def candidate_demos(
        self, student: Module, trainset: Sequence[Example], cand: int, ctx: RunContext
    ) -> DemoSets:
        """Demo sets of candidate ``cand`` (-3 zero-shot, -2 labeled, -1 in order, >= 0
        shuffled with a random size)."""
        rng = step_rng(ctx.seed, f"candidate/{cand}")
        if cand == -3:
            return {name: [] for name, _ in student.named_predictors()}
        if cand == -2:
            return LabeledFewShot(k=self.max_labeled_demos).labeled_demos(student, trainset, rng)
        examples = list(trainset)
        size = self.max_bootstrapped_demos
        if cand >= 0:
            rng.shuffle(examples)
            size = rng.randint(self.min_num_samples, max(self.min_num_samples, size))
        found: dict[str, Any] = bootstrap_demo_sets(
            student=student,
            teacher=self.teacher,
            trainset=examples,
            metric=self.metric,
            metric_threshold=self.metric_threshold,
            max_bootstrapped_demos=size,
            max_labeled_demos=self.max_labeled_demos,
            max_rounds=self.max_rounds,
            rng=rng,
            ctx=ctx,
        )
        demos: DemoSets = found["demos"]
        return demos

    def plan(
        self,
        student: Module,
        trainset: Sequence[Example],
        valset: Sequence[Example] | None,
        ctx: RunContext,
    ) -> Plan:
        devset = list(valset if valset is not None else trainset)
        base = student.reset_copy()

        def candidate(cand: int) -> dict[str, Any]:
            demos = self.candidate_demos(base, trainset, cand, ctx)
            score, scores = score_program(with_demos(base, demos), devset, self.metric, ctx)
            return {"candidate": cand, "demos": demos, "score": score, "scores": scores}

        # Candidates are independent: one parallel group (each checkpointed when done).
        group = [
            Step(f"candidate/{cand}", partial(candidate, cand))
            for cand in range(-3, self.num_candidate_programs)
        ]
        scored: list[dict[str, Any]] = yield group
        best: dict[str, Any] | None = None
        for data in scored:
            if best is None or data["score"] > best["score"]:
                best = data
            if self.stop_at_score is not None and best["score"] >= self.stop_at_score:
                break
        assert best is not None
        return with_demos(base, best["demos"])
