"""``MIPROv2``: search instructions and demo sets together, scoring on minibatches.

1. Demo sets: ``num_candidates`` candidate demo sets per predictor, made as random search
   makes its candidates (zero-shot, labeled, bootstrapped in order, then shuffled).
2. Instructions: the prompt model proposes ``num_candidates - 1`` instructions per
   predictor beside the current one, each grounded in the task's fields, a few training
   examples and a randomly drawn tip.
3. Search: ``num_trials`` trials, each scoring one combination (an instruction and a demo
   set per predictor) on a seeded minibatch of the validation set; every
   ``minibatch_full_eval_steps`` trials the combination with the best mean minibatch score
   is scored on the whole validation set. The best fully evaluated combination wins.
   Trials run in parallel batches of ``trial_batch`` (each batch chosen from the results
   of the trials before it), never crossing a full-evaluation boundary.

The search is our own, seeded and documented (no Optuna: it is not a dependency here, and
replaying a TPE study on resume would add more than it saves at these trial counts): the
first trials sweep every option of every parameter in a seeded order, later ones pick per
parameter the option with the best mean minibatch score, or (with probability
``explore``) a random one. Each trial's choice depends only on the seed and the results of
earlier trials, which are checkpointed, so a resumed search makes the same choices.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from dspy_actors import _settings as settings
from dspy_actors.evaluate._parallel import parallel_map
from dspy_actors.evaluate.metrics import Metric
from dspy_actors.optimizers._base import Optimizer, Plan, RunContext, Step, step_rng
from dspy_actors.optimizers._program import (
    DemoSets,
    score_program,
    with_demos,
    with_instructions,
)
from dspy_actors.optimizers._proposals import (
    TIPS,
    GroundedProposeInstruction,
    describe_task,
    propose,
    render_examples,
)
from dspy_actors.optimizers._random_search import BootstrapFewShotWithRandomSearch
from dspy_actors.primitives.example import Example
from dspy_actors.primitives.module import Module

__all__ = ["MIPROv2"]

Choice = dict[str, list[int]]  # predictor name -> [instruction index, demo set index]

# auto= presets, as DSPy's: (candidates n, validation examples used at most).
AUTO_RUN_SETTINGS: dict[str, tuple[int, int]] = {
    "light": (6, 100),
    "medium": (12, 300),
    "heavy": (18, 1000),
}
_AUTO_MIN_MINIBATCH = 50
_DEFAULT_CANDIDATES = 6
_DEFAULT_TRIALS = 12


@dataclass(frozen=True, slots=True)
class _Budget:
    demo_sets: int
    instructions: int
    trials: int
    devset: list[Example]
    minibatch: bool
    zero_shot: bool


class MIPROv2(Optimizer):
    """Joint instruction and demo search over minibatches; see the module docstring."""

    def __init__(
        self,
        metric: Metric,
        *,
        prompt_model: Any = None,
        task_model: Any = None,
        auto: str | None = None,
        num_candidates: int | None = None,
        max_bootstrapped_demos: int = 4,
        max_labeled_demos: int = 4,
        num_trials: int | None = None,
        minibatch: bool = True,
        minibatch_size: int = 25,
        minibatch_full_eval_steps: int = 5,
        init_temperature: float = 0.5,
        explore: float = 0.25,
        trial_batch: int = 4,
        metric_threshold: float | None = None,
        num_threads: int = 8,
        seed: int = 9,
    ) -> None:
        if auto not in AUTO_RUN_SETTINGS and auto is not None:
            raise ValueError(
                f"MIPROv2(auto={auto!r}): auto is one of 'light', 'medium', 'heavy', or None "
                "(then set num_candidates and num_trials yourself)"
            )
        if auto is not None and (num_candidates is not None or num_trials is not None):
            raise ValueError(
                f"MIPROv2(auto={auto!r}) sets num_candidates and num_trials from the program "
                "and data; pass auto=None to set them yourself"
            )
        self.auto = auto
        self.metric = metric
        self.prompt_model = prompt_model
        self.task_model = task_model
        self.num_candidates = max(1, num_candidates or _DEFAULT_CANDIDATES)
        self.max_bootstrapped_demos = max_bootstrapped_demos
        self.max_labeled_demos = max_labeled_demos
        self.num_trials = num_trials or _DEFAULT_TRIALS
        self.minibatch = minibatch
        self.minibatch_size = minibatch_size
        self.minibatch_full_eval_steps = max(1, minibatch_full_eval_steps)
        self.init_temperature = init_temperature
        self.explore = explore
        self.trial_batch = max(1, trial_batch)
        self.metric_threshold = metric_threshold
        self.num_threads = num_threads
        self.seed = seed

    # -- steps ------------------------------------------------------------------------------
    def _demo_set(self, base: Module, trainset: list[Example], i: int, ctx: RunContext) -> DemoSets:
        search = BootstrapFewShotWithRandomSearch(
            self.metric,
            max_bootstrapped_demos=self.max_bootstrapped_demos,
            max_labeled_demos=self.max_labeled_demos,
            metric_threshold=self.metric_threshold,
        )
        # Candidate numbering as random search: -3 zero-shot, -2 labeled, -1 in order, ...
        return search.candidate_demos(base, trainset, i - 3, ctx)

    def _demo_step(
        self, base: Module, train: list[Example], i: int, ctx: RunContext
    ) -> dict[str, Any]:
        return {"demos": self._demo_set(base, train, i, ctx)}

    def _instruction_step(
        self, base: Module, name: str, train: list[Example], count: int, ctx: RunContext
    ) -> dict[str, Any]:
        return {"instructions": self._instructions(base, name, train, count, ctx)}

    def _instructions(
        self, base: Module, name: str, trainset: list[Example], count: int, ctx: RunContext
    ) -> list[str]:
        """The current instruction and up to ``count - 1`` proposed ones."""
        predictor = dict(base.named_predictors())[name]
        rng = step_rng(ctx.seed, f"instructions/{name}")
        lm = self.prompt_model or settings.get("lm") or base.get_lm()
        jobs = []
        for i in range(count - 1):
            shown = rng.sample(trainset, min(3, len(trainset)))
            jobs.append((i, render_examples(shown), rng.choice(TIPS)))

        def one(job: tuple[int, str, str]) -> list[str]:
            _, examples, tip = job
            return propose(
                GroundedProposeInstruction,
                lm,
                1,
                self.init_temperature,
                task_description=describe_task(predictor),
                data_examples=examples,
                tip=tip,
            )

        found = parallel_map(
            one, jobs, num_threads=ctx.num_threads, cancel=ctx.cancel, limiter=ctx.slots
        )
        out = [predictor.signature.instructions]
        for proposals in found:
            for text in proposals:
                if text not in out:
                    out.append(text)
        return out

    def _choose(
        self,
        t: int,
        options: dict[str, tuple[int, int]],
        trials: list[dict[str, Any]],
        ctx: RunContext,
    ) -> Choice:
        rng = step_rng(ctx.seed, f"trial/{t}")
        choice: Choice = {}
        for name, (n_instr, n_demo) in options.items():
            picked = []
            for dim, size in enumerate((n_instr, n_demo)):
                sweep = list(range(size))
                step_rng(ctx.seed, f"sweep/{name}/{dim}").shuffle(sweep)
                if t < size:
                    picked.append(sweep[t])
                    continue
                means = _means(trials, name, dim)
                if not means or rng.random() < self.explore:
                    picked.append(rng.randrange(size))
                else:
                    top = max(means.values())
                    picked.append(min(k for k, v in means.items() if v == top))
            choice[name] = picked
        return choice

    def _program(
        self,
        base: Module,
        choice: Choice,
        instructions: dict[str, list[str]],
        demos: list[DemoSets],
    ) -> Module:
        per_pred_demos = {name: demos[c[1]][name] for name, c in choice.items()}
        program = with_demos(base, per_pred_demos)
        return with_instructions(
            program, {name: instructions[name][c[0]] for name, c in choice.items()}
        )

    def _budget(self, n_predictors: int, devset: list[Example], ctx: RunContext) -> _Budget:
        """How many demo sets, instructions and trials; with ``auto``, DSPy's rules: ``n`` =
        6 / 12 / 18 candidates (light / medium / heavy), half as many instructions when
        demos are optimized too, ``max(2 * vars * log2(n), 1.5 * n)`` trials (vars: one per
        predictor, two with demos), the validation set cut to 100 / 300 / 1000 examples
        (seeded), and minibatches only for more than 50."""
        zero_shot = not (self.max_bootstrapped_demos or self.max_labeled_demos)
        if self.auto is None:
            return _Budget(
                self.num_candidates,
                self.num_candidates,
                self.num_trials,
                devset,
                self.minibatch,
                zero_shot,
            )
        n, val_size = AUTO_RUN_SETTINGS[self.auto]
        variables = n_predictors * (1 if zero_shot else 2)
        trials = int(max(2 * variables * math.log2(n), 1.5 * n))
        if len(devset) > val_size:
            devset = step_rng(ctx.seed, "auto/valset").sample(devset, val_size)
        instructions = n if zero_shot else int(n * 0.5)
        return _Budget(
            n, instructions, trials, devset, len(devset) > _AUTO_MIN_MINIBATCH, zero_shot
        )

    # -- the plan ---------------------------------------------------------------------------
    def plan(
        self,
        student: Module,
        trainset: Sequence[Example],
        valset: Sequence[Example] | None,
        ctx: RunContext,
    ) -> Plan:
        train = list(trainset)
        devset = list(valset if valset is not None else trainset)
        base = student.reset_copy()
        if self.task_model is not None:
            base.set_lm(self.task_model)
        names = [n for n, _ in base.named_predictors()]
        budget = self._budget(len(names), devset, ctx)
        devset = budget.devset
        n_demo_sets = budget.demo_sets if not budget.zero_shot else 1
        # Demo sets, then every predictor's proposals: independent steps, run as groups.
        found: list[dict[str, Any]] = yield [
            Step(f"demos/{i}", partial(self._demo_step, base, train, i, ctx))
            for i in range(n_demo_sets)
        ]
        demos: list[DemoSets] = [d["demos"] for d in found]
        proposed: list[dict[str, Any]] = yield [
            Step(
                f"instructions/{n}",
                partial(self._instruction_step, base, n, train, budget.instructions, ctx),
            )
            for n in names
        ]
        instructions = {n: p["instructions"] for n, p in zip(names, proposed, strict=True)}
        options = {n: (len(instructions[n]), len(demos)) for n in names}
        use_minibatch = budget.minibatch and len(devset) > self.minibatch_size

        def evaluate(choice: Choice, examples: list[Example]) -> float:
            program = self._program(base, choice, instructions, demos)
            return score_program(program, examples, self.metric, ctx)[0]

        def trial(choice: Choice, batch: list[int] | None) -> dict[str, Any]:
            examples = devset if batch is None else [devset[i] for i in batch]
            return {"choice": choice, "batch": batch, "score": evaluate(choice, examples)}

        default: Choice = {n: [0, 0] for n in names}
        full: dict[str, float] = {}
        data = yield Step("full_eval/default", lambda: {"score": evaluate(default, devset)})
        full[_key(default)] = data["score"]
        trials: list[dict[str, Any]] = []
        next_full = self.minibatch_full_eval_steps
        t = 0
        num_trials = budget.trials
        while t < num_trials:
            # A batch of trials chosen from the results so far, scored in parallel.
            size = min(self.trial_batch, num_trials - t)
            if use_minibatch:
                size = min(size, next_full - t)
            batch_steps = []
            for k in range(t, t + size):
                choice = self._choose(k, options, trials, ctx)
                picked = (
                    sorted(
                        step_rng(ctx.seed, f"batch/{k}").sample(
                            range(len(devset)), self.minibatch_size
                        )
                    )
                    if use_minibatch
                    else None
                )
                batch_steps.append(Step(f"trial/{k}", partial(trial, choice, picked)))
            results: list[dict[str, Any]] = yield batch_steps
            trials.extend(results)
            t += size
            if not use_minibatch:
                for data in results:
                    full[_key(data["choice"])] = data["score"]
                continue
            if t >= next_full or t == num_trials:
                next_full += self.minibatch_full_eval_steps
                candidate = _best_unevaluated(trials, full)
                if candidate is not None:
                    data = yield Step(f"full_eval/{t - 1}", partial(trial, candidate, None))
                    full[_key(candidate)] = data["score"]
        top = max(full.values())
        winner = next(k for k, v in full.items() if v == top)
        return self._program(base, _unkey(winner), instructions, demos)


def _key(choice: Choice) -> str:
    return "|".join(f"{n}={c[0]},{c[1]}" for n, c in sorted(choice.items()))


def _unkey(key: str) -> Choice:
    out: Choice = {}
    for part in key.split("|"):
        name, _, nums = part.rpartition("=")
        a, b = nums.split(",")
        out[name] = [int(a), int(b)]
    return out


def _means(trials: list[dict[str, Any]], name: str, dim: int) -> dict[int, float]:
    scores: dict[int, list[float]] = {}
    for trial in trials:
        scores.setdefault(trial["choice"][name][dim], []).append(trial["score"])
    return {k: statistics.fmean(v) for k, v in scores.items()}


def _best_unevaluated(trials: list[dict[str, Any]], full: dict[str, float]) -> Choice | None:
    by_key: dict[str, list[float]] = {}
    for trial in trials:
        by_key.setdefault(_key(trial["choice"]), []).append(trial["score"])
    ranked = sorted(
        ((statistics.fmean(v), -i, k) for i, (k, v) in enumerate(by_key.items()) if k not in full),
        reverse=True,
    )
    return _unkey(ranked[0][2]) if ranked else None
