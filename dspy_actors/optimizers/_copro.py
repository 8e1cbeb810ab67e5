"""``COPRO``: coordinate ascent over each predictor's instruction with a prompt model.

For each predictor in turn: the prompt model proposes ``breadth - 1`` instructions (beside
the current one); each is scored on the training set; then, ``depth - 1`` more times, the
prompt model sees the attempts so far with their scores and proposes more. The best
instruction is kept before moving to the next predictor. Proposing and evaluating are
separate steps, so a resumed run neither re-proposes nor re-scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dspy_actors import _settings as settings
from dspy_actors.evaluate._parallel import parallel_map
from dspy_actors.evaluate.metrics import Metric
from dspy_actors.optimizers._base import Optimizer, Plan, RunContext, Step
from dspy_actors.optimizers._program import score_program, with_instructions
from dspy_actors.optimizers._proposals import (
    BasicGenerateInstruction,
    GenerateInstructionGivenAttempts,
    propose,
)
from dspy_actors.primitives.example import Example
from dspy_actors.primitives.module import Module

__all__ = ["COPRO"]

_EVAL_KWARGS = frozenset(
    {"num_threads", "max_errors", "display_progress", "display_table", "provide_traceback"}
)


class COPRO(Optimizer):
    """Instruction search; ``prompt_model`` proposes (the settings' LM if None)."""

    def __init__(
        self,
        metric: Metric,
        *,
        prompt_model: Any = None,
        breadth: int = 10,
        depth: int = 3,
        init_temperature: float = 1.4,
        num_threads: int = 8,
        seed: int = 0,
    ) -> None:
        if breadth <= 1:
            raise ValueError("COPRO needs breadth > 1")
        self.metric = metric
        self.prompt_model = prompt_model
        self.breadth = breadth
        self.depth = depth
        self.init_temperature = init_temperature
        self.num_threads = num_threads
        self.seed = seed

    def compile(
        self,
        student: Module,
        *,
        trainset: Sequence[Example],
        eval_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Module:
        """As :meth:`Optimizer.compile`. ``eval_kwargs`` are DSPy's arguments for the
        evaluations: ``num_threads`` and ``max_errors`` apply; ``display_progress``,
        ``display_table`` and ``provide_traceback`` are accepted and have nothing to show
        here (an optimizer's evaluations print nothing)."""
        run = self
        if eval_kwargs:
            unknown = sorted(set(eval_kwargs) - _EVAL_KWARGS)
            if unknown:
                raise TypeError(
                    f"COPRO.compile(eval_kwargs=...) got {unknown}; it takes {sorted(_EVAL_KWARGS)}"
                )
            changes = {k: eval_kwargs[k] for k in ("num_threads", "max_errors") if k in eval_kwargs}
            run = self._with(**changes)
        return Optimizer.compile(run, student, trainset=trainset, **kwargs)

    def _lm(self, student: Module) -> Any:
        return self.prompt_model or settings.get("lm") or student.get_lm()

    def plan(
        self,
        student: Module,
        trainset: Sequence[Example],
        valset: Sequence[Example] | None,
        ctx: RunContext,
    ) -> Plan:
        devset = list(trainset)
        best: dict[str, str] = {n: p.signature.instructions for n, p in student.named_predictors()}
        for name, predictor in student.named_predictors():
            attempts: dict[str, float] = {}
            for d in range(self.depth):
                if d == 0:
                    basic = predictor.signature.instructions

                    def first(basic: str = basic) -> dict[str, Any]:
                        found = propose(
                            BasicGenerateInstruction,
                            self._lm(student),
                            self.breadth - 1,
                            self.init_temperature,
                            basic_instruction=basic,
                        )
                        return {"instructions": [basic, *[i for i in found if i != basic]]}

                    proposed = yield Step(f"{name}/depth{d}/propose", first)
                else:
                    ranked = sorted(attempts.items(), key=lambda kv: kv[1])[-self.breadth :]
                    shown = "\n".join(
                        f"Instruction #{i + 1}: {text}\nResulting Score #{i + 1}: {score:.2f}"
                        for i, (text, score) in enumerate(ranked)
                    )

                    def more(shown: str = shown) -> dict[str, Any]:
                        found = propose(
                            GenerateInstructionGivenAttempts,
                            self._lm(student),
                            self.breadth - 1,
                            self.init_temperature,
                            attempted_instructions=shown,
                        )
                        return {"instructions": found}

                    proposed = yield Step(f"{name}/depth{d}/propose", more)
                fresh = [i for i in proposed["instructions"] if i not in attempts]

                def score_all(fresh: list[str] = fresh, name: str = name) -> dict[str, Any]:
                    def one(instruction: str) -> float:
                        program = with_instructions(student.deepcopy(), {**best, name: instruction})
                        return score_program(program, devset, self.metric, ctx)[0]

                    # Candidates in parallel; their examples share the run's thread bound.
                    scores = parallel_map(
                        one, fresh, num_threads=ctx.step_concurrency, cancel=ctx.cancel
                    )
                    return {"instructions": fresh, "scores": scores}

                scored = yield Step(f"{name}/depth{d}/eval", score_all)
                for text, score in zip(scored["instructions"], scored["scores"], strict=True):
                    attempts[text] = score
            if attempts:
                # Highest score; among equals, the one tried first.
                top = max(attempts.values())
                best[name] = next(t for t, s in attempts.items() if s == top)
        return with_instructions(student.deepcopy(), best)
