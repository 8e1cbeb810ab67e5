"""Asking a prompt model for instructions (COPRO, MIPROv2)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dspy_actors.modules._predict import Predict
from dspy_actors.primitives._predictor import Predictor
from dspy_actors.primitives.example import Example
from dspy_actors.signatures.field import InputField, OutputField
from dspy_actors.signatures.signature import Signature

__all__ = ["TIPS", "describe_task", "propose"]


class BasicGenerateInstruction(Signature):
    """You are an instruction optimizer for large language models. I will give you a
    signature of fields (inputs and outputs) in English. Your task is to propose an
    instruction that will lead a good language model to perform the task well. Don't be
    afraid to be creative."""

    basic_instruction: str = InputField(desc="The initial instructions before optimization")
    proposed_instruction: str = OutputField(desc="The improved instructions for the language model")


class GenerateInstructionGivenAttempts(Signature):
    """You are an instruction optimizer for large language models. I will give some task
    instructions I've tried, along with their corresponding validation scores. The
    instructions are arranged in increasing order based on their scores, where higher scores
    indicate better quality. Your task is to propose a new instruction that will lead a good
    language model to perform the task even better. Don't be afraid to be creative."""

    attempted_instructions: str = InputField(desc="Instructions tried so far, with their scores")
    proposed_instruction: str = OutputField(desc="The improved instructions for the language model")


class GroundedProposeInstruction(Signature):
    """Use the information below to learn about a task that we are trying to solve using
    calls to an LM, then generate a new instruction that will be used to prompt a Language
    Model to better solve the task."""

    task_description: str = InputField(desc="The task's fields and its current instruction")
    data_examples: str = InputField(desc="A few examples from the training data")
    tip: str = InputField(desc="A suggestion for how to go about generating the new instruction")
    proposed_instruction: str = OutputField(desc="Propose an instruction for the language model")


TIPS = (
    "Keep the instruction clear and concise.",
    "Be creative.",
    "Make the instruction very specific to the task.",
    "Describe the persona the model should take on.",
    "Say what a good answer looks like.",
    "Spell out the steps the model should follow.",
)


def describe_task(predictor: Predictor) -> str:
    sig = predictor.signature
    return f"Fields: {sig.signature}\nCurrent instruction: {sig.instructions}"


def render_examples(examples: Sequence[Example]) -> str:
    return "\n\n".join("\n".join(f"{k}: {v}" for k, v in ex.items()) for ex in examples)


def _clean(values: Sequence[Any]) -> list[str]:
    seen: list[str] = []
    for value in values:
        text = str(value or "").strip()
        if text and text not in seen:
            seen.append(text)
    return seen


def propose(
    signature: type[Signature],
    lm: Any,
    n: int,
    temperature: float,
    **inputs: Any,
) -> list[str]:
    """``n`` instruction proposals from ``lm`` (distinct, in completion order)."""
    if n <= 0:
        return []
    predictor = Predict(signature, n=n, temperature=temperature)
    predictor.lm = lm
    prediction = predictor(**inputs)
    return _clean(prediction.completions.proposed_instruction)
