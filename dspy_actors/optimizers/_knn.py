"""``KNNFewShot``: per input, demos bootstrapped from its ``k`` nearest training examples.

The embedding function is pluggable: any ``embedder(texts) -> vectors`` (a sentence
transformer, an embeddings API, a bag of words). Training examples are embedded once, at
compile time (one step, checkpointed); each call embeds its input, takes the ``k`` most
similar examples (cosine similarity) and compiles the student with ``BootstrapFewShot`` on
them, as DSPy does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from dspy_actors.optimizers._base import Optimizer, Plan, RunContext, Step
from dspy_actors.optimizers._bootstrap import BootstrapFewShot
from dspy_actors.primitives.example import Example
from dspy_actors.primitives.module import Module
from dspy_actors.primitives.prediction import Prediction

__all__ = ["Embedder", "KNNFewShot", "KNNFewShotProgram"]

Embedder = Callable[[list[str]], list[list[float]]]


def _text(values: dict[str, Any]) -> str:
    return " | ".join(f"{k}: {v}" for k, v in values.items())


def _cosine(a: Sequence[float], b: Sequence[float]) -> float:
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(x * x for x in b))
    if na == 0 or nb == 0:
        return 0.0
    return sum(x * y for x, y in zip(a, b, strict=False)) / (na * nb)


class KNNFewShotProgram(Module):
    """The compiled program: bootstraps demos from the nearest examples on every call."""

    def __init__(
        self,
        student: Module,
        trainset: list[Example],
        vectors: list[list[float]],
        embedder: Embedder,
        k: int,
        bootstrap_args: dict[str, Any],
    ) -> None:
        self.student = student
        self._trainset = trainset
        self._vectors = vectors
        self._embedder = embedder
        self._k = k
        self._bootstrap_args = bootstrap_args

    def neighbors(self, **inputs: Any) -> list[Example]:
        """The ``k`` training examples nearest to ``inputs`` (ties: earlier first)."""
        query = self._embedder([_text(inputs)])[0]
        scored = sorted(
            range(len(self._trainset)), key=lambda i: (-_cosine(query, self._vectors[i]), i)
        )
        return [self._trainset[i] for i in scored[: self._k]]

    def forward(self, **inputs: Any) -> Prediction:
        optimizer = BootstrapFewShot(**self._bootstrap_args)
        program = optimizer.compile(self.student, trainset=self.neighbors(**inputs))
        result: Prediction = program(**inputs)
        return result


class KNNFewShot(Optimizer):
    """``KNNFewShot(k, trainset, vectorizer, **bootstrap_args)``; ``compile(student)``.

    ``vectorizer`` is DSPy's name: a :class:`dspy_actors.Embedder` or any function from a
    list of texts to vectors; ``embedder=`` is the same argument under this project's
    name."""

    def __init__(
        self,
        k: int,
        trainset: Sequence[Example],
        vectorizer: Embedder | None = None,
        *,
        embedder: Embedder | None = None,
        **bootstrap_args: Any,
    ) -> None:
        chosen = vectorizer if vectorizer is not None else embedder
        if chosen is None or (vectorizer is not None and embedder is not None):
            raise TypeError(
                "KNNFewShot needs one vectorizer: KNNFewShot(k, trainset, "
                "vectorizer=dspy_actors.Embedder(...))"
            )
        self.k = k
        self.trainset = list(trainset)
        self.embedder = chosen
        self.bootstrap_args = bootstrap_args

    @property
    def vectorizer(self) -> Embedder:
        return self.embedder

    def plan(
        self,
        student: Module,
        trainset: Sequence[Example],
        valset: Sequence[Example] | None,
        ctx: RunContext,
    ) -> Plan:
        examples = self.trainset or list(trainset)

        def embed() -> dict[str, Any]:
            texts = [_text(e.inputs().to_dict()) for e in examples]
            return {"vectors": [list(map(float, v)) for v in self.embedder(texts)]}

        data = yield Step("embed", embed)
        return KNNFewShotProgram(
            student.reset_copy(), examples, data["vectors"], self.embedder, self.k,
            {"num_threads": ctx.num_threads, **self.bootstrap_args},
        )  # fmt: skip

    def compile(
        self,
        student: Module,
        *,
        trainset: Sequence[Example] | None = None,
        valset: Sequence[Example] | None = None,
        **kwargs: Any,
    ) -> Module:
        """Compile ``student`` (the training set given to the constructor is used)."""
        return super().compile(student, trainset=trainset or self.trainset, valset=valset, **kwargs)
