"""Modules the runtime tests serve."""

from __future__ import annotations

import threading
from typing import Any

from dspy_actors.modules.chain_of_thought import ChainOfThought
from dspy_actors.modules.predict import Predict
from dspy_actors.primitives.module import Module
from dspy_actors.primitives.prediction import Prediction


class Retriever(Module):
    """Pure Python step: k fake passages about the question."""

    def __init__(self, k: int = 3) -> None:
        super().__init__()
        self.k = k

    def forward(self, question: str) -> Prediction:
        return Prediction(context=[f"passage {i} about {question}" for i in range(self.k)])


class RAG(Module):
    """A composite: retrieve, then answer with chain of thought."""

    def __init__(self) -> None:
        super().__init__()
        self.retrieve = Retriever(2)
        self.answer = ChainOfThought("context: list[str], question -> answer")

    def forward(self, question: str) -> Prediction:
        context = self.retrieve(question=question).context
        return self.answer(context=context, question=question)


class Poisonable(Module):
    """Crashes (a bug, not a bad input) on the question "poison"; answers otherwise."""

    crashes = 0
    lock = threading.Lock()

    def __init__(self) -> None:
        super().__init__()
        self.qa = Predict("question -> answer")

    def forward(self, question: str) -> Any:
        if question == "poison":
            with Poisonable.lock:
                Poisonable.crashes += 1
            raise RuntimeError("cannot digest this input")
        return self.qa(question=question)
