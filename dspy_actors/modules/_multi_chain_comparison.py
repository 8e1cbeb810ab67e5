"""``MultiChainComparison``: compare M reasoning attempts and give one corrected answer.

As DSPy's: the signature gets one input per attempt (``reasoning_attempt_1`` ..
``reasoning_attempt_M``, each "Student Attempt #i:") and a ``rationale`` output first; each
attempt is shown as its reasoning's first line and its answer's (the last output field).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dspy_actors.lm._steps import Steps
from dspy_actors.modules._predict import Predict
from dspy_actors.primitives.module import Module
from dspy_actors.primitives.prediction import Prediction
from dspy_actors.signatures.field import InputField, OutputField
from dspy_actors.signatures.signature import Signature, ensure_signature

__all__ = ["MultiChainComparison"]


class MultiChainComparison(Module):
    """``MultiChainComparison(signature, M=3)(completions=[...], **inputs)``: the
    ``completions`` are M predictions (or dicts) with ``reasoning`` (or ``rationale``) and
    the signature's last output field, e.g. from ``ChainOfThought(..., n=M)``'s
    ``.completions``."""

    def __init__(
        self,
        signature: str | type[Signature],
        M: int = 3,
        temperature: float = 0.7,
        **config: Any,
    ) -> None:
        if not isinstance(M, int) or M < 1:
            raise ValueError(f"MultiChainComparison(M={M!r}): M must be a positive int")
        self.M = M
        base = ensure_signature(signature)
        outputs = list(base.output_fields)
        if not outputs:
            raise ValueError(f"signature {base.signature!r} has no output field to compare")
        self.last_key = outputs[-1]
        for i in range(1, M + 1):
            base = base.append(
                f"reasoning_attempt_{i}",
                InputField(prefix=f"Student Attempt #{i}:", desc="${reasoning attempt}"),
                str,
            )
        base = base.prepend(
            "rationale",
            OutputField(
                prefix="Accurate Reasoning: Thank you everyone. Let's now holistically",
                desc="${corrected reasoning}",
            ),
            str,
        )
        self.predict = Predict(base, temperature=temperature, **config)

    def attempts(self, completions: Sequence[Mapping[str, Any]]) -> dict[str, str]:
        """The ``reasoning_attempt_i`` inputs for ``completions``; an error if there are not
        exactly M of them or one lacks its reasoning or answer."""
        if len(completions) != self.M:
            raise ValueError(
                f"MultiChainComparison got {len(completions)} completions but was built with "
                f"M={self.M}: pass M={len(completions)} when making it, or pass {self.M}"
            )
        shown: dict[str, str] = {}
        for i, completion in enumerate(completions, 1):
            reasoning = completion.get("rationale", completion.get("reasoning"))
            if reasoning is None or self.last_key not in completion:
                raise ValueError(
                    f"completion {i} needs `reasoning` (or `rationale`) and `{self.last_key}`; "
                    f"it has {sorted(completion.keys())}"
                )
            reason = str(reasoning).strip().split("\n")[0].strip()
            answer = str(completion[self.last_key]).strip().split("\n")[0].strip()
            shown[f"reasoning_attempt_{i}"] = (
                f"«I'm trying to {reason} I'm not sure but my prediction is {answer}»"
            )
        return shown

    def forward(self, completions: Sequence[Mapping[str, Any]], **kwargs: Any) -> Prediction:
        return self.predict(**{**self.attempts(completions), **kwargs})  # type: ignore[no-any-return]

    def steps(self, completions: Sequence[Mapping[str, Any]], **kwargs: Any) -> Steps[Prediction]:
        """Its predictor's steps (served, it is one predictor actor)."""
        return self.predict.steps(**{**self.attempts(completions), **kwargs})
