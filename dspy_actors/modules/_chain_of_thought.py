"""``ChainOfThought``: Predict with a ``reasoning`` output before the others."""

from __future__ import annotations

from typing import Any

from dspy_actors.lm._steps import Steps
from dspy_actors.modules._predict import Predict
from dspy_actors.primitives.module import Module
from dspy_actors.primitives.prediction import Prediction
from dspy_actors.signatures.field import OutputField
from dspy_actors.signatures.signature import Signature, ensure_signature

__all__ = ["ChainOfThought"]

REASONING_DESC = "Think step by step to reach the answer."


class ChainOfThought(Module):
    """Asks the LM to reason first: the signature gets a ``reasoning`` output field in front
    of the others. The inner predictor is ``self.predict``."""

    def __init__(
        self, signature: str | type[Signature], rationale_field: Any = None, **config: Any
    ) -> None:
        base = ensure_signature(signature)
        # Keep the task's own instructions ("Given `question`, produce `answer`"): the
        # reasoning field is how to get there, not part of the task.
        base = base.with_instructions(base.instructions)
        field = rationale_field if rationale_field is not None else OutputField(desc=REASONING_DESC)
        self.predict = Predict(base.prepend("reasoning", field, str), **config)

    @property
    def signature(self) -> type[Signature]:
        return self.predict.signature

    def forward(self, **kwargs: Any) -> Prediction:
        return self.predict(**kwargs)  # type: ignore[no-any-return]

    async def aforward(self, **kwargs: Any) -> Prediction:
        return await self.predict.acall(**kwargs)  # type: ignore[no-any-return]

    def steps(self, **kwargs: Any) -> Steps[Prediction]:
        """Its predictor's steps (so the runtime serves it as one predictor actor)."""
        return self.predict.steps(**kwargs)
