"""Quickstart: DSPy-style programs in your own process, no runtime, no actors.

Run it:  .venv/bin/python examples/quickstart.py

It starts SimLM (a simulated OpenAI-compatible server on loopback, so no key or network is
needed) and then does what a DSPy user does first: configure an LM, call a Predict and a
ChainOfThought, write a class-based signature with typed outputs, compose modules into a
program, look at the prompt that was sent, and save and load the program's learned state.

To use a real provider instead, replace the LM line with, e.g.,
``dsa.LM("openai/gpt-4o-mini")`` (key from OPENAI_API_KEY): see docs/providers.md.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Literal

import dspy_actors as dsa
from dspy_actors.testing import SimLM


class Classify(dsa.Signature):
    """Classify the sentiment of a review."""

    review: str = dsa.InputField()
    sentiment: Literal["positive", "negative"] = dsa.OutputField()
    confidence: float = dsa.OutputField(desc="between 0 and 1")


class DraftThenAnswer(dsa.Module):
    """A program of two predictors: a draft, then an answer that reads it."""

    def __init__(self) -> None:
        super().__init__()
        self.draft = dsa.Predict("question -> draft")
        self.answer = dsa.ChainOfThought("question, draft -> answer")

    def forward(self, question: str) -> dsa.Prediction:
        draft = self.draft(question=question).draft
        return self.answer(question=question, draft=draft)


def main() -> None:
    with SimLM() as sim:
        lm = dsa.LM("openai/gpt-4o-mini", api_base=sim.openai_base, api_key="sim")
        dsa.configure(lm=lm)

        # 1. A one-line signature: inputs -> outputs.
        qa = dsa.Predict("question -> answer")
        print("Predict:          ", qa(question="What is 2 + 2?").answer)

        # 2. Chain of thought adds a `reasoning` output before the answer.
        cot = dsa.ChainOfThought("question -> answer: int")
        prediction = cot(question="What is 6 * 7?")
        print("ChainOfThought:   ", prediction.answer, "| reasoning:", prediction.reasoning)

        # 3. A class-based signature: its docstring is the task, its fields are typed.
        verdict = dsa.Predict(Classify)(review="The soup was cold and the waiter rude.")
        print("Typed outputs:    ", verdict.sentiment, type(verdict.confidence).__name__)

        # 4. Modules compose like functions; every sub-module is a learnable parameter.
        program = DraftThenAnswer()
        print("Composed program: ", program(question="What is 10 - 3?").answer)
        print("Its predictors:   ", [name for name, _ in program.named_predictors()])

        # 5. What was sent: the last prompt, in the [[ ## field ## ]] format.
        last = lm.history[-1]["messages"][-1]["content"]
        print("Last prompt sent (end):", " ".join(last.split()[-12:]))

        # 6. Learned state (demos, instructions) saves to JSON and loads into a fresh copy.
        program.answer.predict.demos = [
            dsa.Example(question="What is 1 + 1?", draft="2", reasoning="1 + 1 = 2", answer="2")
        ]
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "program.json"
            program.save(path)  # JSON: readable, diffable, no pickles
            fresh = DraftThenAnswer().load(path)
            saved = json.loads(path.read_text())
        print("Saved predictors: ", sorted(saved["state"]))
        print("Demos after load: ", len(fresh.answer.predict.demos))
        print("Tokens spent:     ", program.usage.total_tokens, "by the composed program")
        lm.close()


if __name__ == "__main__":
    main()
