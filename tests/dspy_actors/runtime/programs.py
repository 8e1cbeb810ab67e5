"""Modules the runtime tests serve."""

from __future__ import annotations

import threading
import time
from typing import Any

from dspy_actors.lm._lm import LM
from dspy_actors.modules._chain_of_thought import ChainOfThought
from dspy_actors.modules._predict import Predict
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


class TracedPredict(Predict):
    """A Predict that records the thread its steps ran in, and crashes (a bug, in the
    steps themselves: no call thread involved) on the question "boom"."""

    def __init__(self, signature: str = "question -> answer") -> None:
        super().__init__(signature)
        self.threads: list[int] = []

    def hold(self, held: threading.Event, release: threading.Event) -> None:
        """Run by the actor (a ProxyCall): keeps its turn until ``release``."""
        held.set()
        release.wait(10.0)

    def steps(self, **kwargs: Any) -> Any:
        self.threads.append(threading.get_ident())
        if kwargs.get("question") == "boom":
            raise RuntimeError("a bug in the predictor")
        return (yield from super().steps(**kwargs))


class RecordingLM(LM):
    """An LM subclass that records the threads its completions ran in, how many ran at
    once at most, and how many ended; each takes ``delay`` seconds longer."""

    def __init__(self, *args: Any, delay: float = 0.02, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.delay = delay
        self.lock = threading.Lock()
        self.threads: list[int] = []
        self.now = 0
        self.most = 0
        self.completed = 0

    def complete(self, messages: list[dict[str, Any]], **kwargs: Any) -> Any:
        with self.lock:
            self.threads.append(threading.get_ident())
            self.now += 1
            self.most = max(self.most, self.now)
        try:
            time.sleep(self.delay)
            return super().complete(messages, **kwargs)
        finally:
            with self.lock:
                self.now -= 1
                self.completed += 1
