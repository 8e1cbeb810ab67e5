"""``TwoStepAdapter``: a plain prompt for the main LM, then a second LM extracts the fields
(DSPy's ``TwoStepAdapter``; useful with reasoning models that do poorly at strict formats).

Step one asks the main LM in plain words: a system message describing the task, its inputs
and outputs, then ``name: value`` inputs; its answer is free text. Step two gives each
completion's text to ``extraction_model`` through :class:`ChatAdapter` with a signature of
one ``text`` input and the task's output fields, which extracts the typed outputs. Both are
steps (:mod:`dspy_actors.lm._steps`), so served, neither LM call blocks an actor.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dspy_actors._callbacks import reporting_lm_call
from dspy_actors.adapters._errors import AdapterParseError
from dspy_actors.adapters._values import format_value
from dspy_actors.adapters.base import Adapter, Message, describe_fields, prompt_inputs
from dspy_actors.adapters.chat_adapter import ChatAdapter
from dspy_actors.lm._steps import LMCall, Steps
from dspy_actors.primitives.example import Example
from dspy_actors.signatures.field import InputField
from dspy_actors.signatures.signature import Signature

__all__ = ["TwoStepAdapter"]


class TwoStepAdapter(Adapter):
    """``TwoStepAdapter(extraction_model)``: see the module docstring. ``extraction_model``
    is an LM (anything with ``complete``), usually a small, cheap one."""

    name = "TwoStepAdapter"

    def __init__(self, extraction_model: Any) -> None:
        if not callable(getattr(extraction_model, "complete", None)):
            raise TypeError(
                "TwoStepAdapter(extraction_model=...) needs an LM, e.g. "
                f"dspy_actors.LM('openai/gpt-4o-mini'); got {type(extraction_model).__name__}"
            )
        self.extraction_model = extraction_model
        self._extractor = ChatAdapter()

    def __repr__(self) -> str:
        return f"TwoStepAdapter(extraction_model={self.extraction_model!r})"

    def steps(
        self,
        lm: Any,
        lm_kwargs: Mapping[str, Any],
        signature: type[Signature],
        demos: Sequence[Example | Mapping[str, Any]],
        inputs: Mapping[str, Any],
    ) -> Steps[list[dict[str, Any]]]:
        messages = self.format(signature, demos, inputs)
        kwargs = dict(lm_kwargs)
        reporting = reporting_lm_call(lm, messages, kwargs)  # None without callbacks
        if reporting is None:
            response = yield LMCall(lm, messages, kwargs)
        else:
            with reporting as report:
                response = yield LMCall(lm, messages, kwargs)
                report.outputs = list(response.outputs)
        extractor = extractor_signature(signature)
        values = []
        for text in response.outputs:
            try:
                extracted = yield from self._extractor.steps(
                    self.extraction_model, {}, extractor, [], {"text": text}
                )
            except AdapterParseError as exc:
                raise AdapterParseError(
                    exc.field,
                    exc.expected_type,
                    text,
                    reason=f"the extraction model's answer could not be parsed: {exc.reason}",
                    adapter=self.name,
                ) from exc
            values.append(extracted[0])
        return values

    def format(
        self,
        signature: type[Signature],
        demos: Sequence[Example | Mapping[str, Any]],
        inputs: Mapping[str, Any],
    ) -> list[Message]:
        messages: list[Message] = [{"role": "system", "content": self.task_description(signature)}]
        messages.extend(self.format_demos(signature, demos))
        messages.append({"role": "user", "content": self.format_inputs(signature, inputs)})
        return messages

    def task_description(self, signature: type[Signature]) -> str:
        parts = [
            "You are a helpful assistant that can solve tasks based on user input.",
            "As input, you will be provided with:\n"
            + describe_fields(list(prompt_inputs(signature))),
            "Your outputs must contain:\n"
            + describe_fields(list(signature.output_fields.values())),
            "You should lay out your outputs in detail so that your answer can be understood "
            "by another agent",
        ]
        if signature.instructions:
            parts.append(f"Specific instructions: {signature.instructions}")
        return "\n".join(parts)

    def format_inputs(
        self, signature: type[Signature], values: Mapping[str, Any], prefix: str | None = None
    ) -> str:
        parts = [prefix] if prefix else []
        for f in prompt_inputs(signature):
            if f.name in values:
                value = format_value(values[f.name])
                parts.append(f"{f.name}: {value if isinstance(value, str) else values[f.name]}")
        return "\n\n".join(parts).strip()

    def format_outputs(
        self, signature: type[Signature], values: Mapping[str, Any], *, missing: str | None
    ) -> str:
        parts = []
        for name in signature.output_fields:
            if name in values:
                parts.append(f"{name}: {values[name]}")
            elif missing is not None:
                parts.append(f"{name}: {missing}")
        return "\n\n".join(parts).strip()

    def parse(self, signature: type[Signature], completion: str) -> dict[str, Any]:
        raise TypeError(
            "TwoStepAdapter parses with a second LM call: run it through a predictor "
            "(it is steps, see TwoStepAdapter.steps), not parse() alone"
        )


def extractor_signature(signature: type[Signature]) -> type[Signature]:
    """One ``text`` input and ``signature``'s output fields, instructed to extract them."""
    extractor: type[Signature] = signature
    for name in list(signature.input_fields):
        extractor = extractor.delete(name)
    extractor = extractor.prepend("text", InputField(), str)
    names = ", ".join(f"`{n}`" for n in signature.output_fields)
    return extractor.with_instructions(
        "The input is a text that should contain all the necessary information to produce "
        f"the fields {names}. Your job is to extract the fields from the text verbatim. "
        "Extract precisely the appropriate value (content) for each field."
    )
