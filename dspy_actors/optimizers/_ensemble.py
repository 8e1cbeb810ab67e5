"""``Ensemble``: one program that runs several and reduces their outputs."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from dspy_actors.evaluate.metrics import normalize_text
from dspy_actors.primitives.module import Module
from dspy_actors.primitives.prediction import Completions, Prediction

__all__ = ["Ensemble", "EnsembledProgram", "majority"]

ReduceFn = Callable[[list[Any]], Any]


_DEFAULT: Any = object()


def majority(
    prediction_or_completions: Prediction | Completions | Sequence[Any],
    normalize: Callable[[Any], Any] | None = _DEFAULT,
    field: str | None = None,
) -> Prediction:
    """The completion whose ``field`` (default: the last field) is most common, as DSPy's
    ``majority``: takes a Prediction (its completions), Completions, or a list of
    predictions. Values are compared after ``normalize`` (default: lower case, no
    punctuation or articles; None compares them as they are); a completion whose value
    normalizes to None is not counted. Among equally common values, the earliest wins."""
    if isinstance(prediction_or_completions, Prediction):
        items: list[Any] = list(prediction_or_completions.completions)
    elif isinstance(prediction_or_completions, Completions):
        items = list(prediction_or_completions)
    elif isinstance(prediction_or_completions, Sequence):
        items = [p for p in prediction_or_completions if p is not None]
    else:
        raise TypeError(
            "majority() takes a Prediction, its completions, or a list of predictions, "
            f"not {type(prediction_or_completions).__name__}"
        )
    if not items:
        raise ValueError("majority() needs at least one prediction")
    key = field or list(items[0].keys())[-1]
    norm = normalize_text if normalize is _DEFAULT else (normalize or (lambda v: v))

    def value(item: Any) -> Any:
        found = norm(item.get(key))
        return found if found is None or _hashable(found) else str(found)

    values = [value(p) for p in items]
    counted = [v for v in values if v is not None] or values
    counts = Counter(counted)
    top = max(counts.values())
    winner = next(v for v in counted if counts[v] == top)
    return Prediction(items[values.index(winner)])


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


class EnsembledProgram(Module):
    """Runs ``size`` of its programs (all if None; a seeded sample otherwise) and reduces."""

    def __init__(
        self,
        programs: list[Module],
        reduce_fn: ReduceFn | None,
        size: int | None,
        deterministic: bool,
        seed: int,
    ) -> None:
        self.programs = programs
        self._reduce_fn = reduce_fn
        self._size = size
        self._deterministic = deterministic
        self._rng = random.Random(seed)

    def forward(self, **inputs: Any) -> Any:
        programs = self.programs
        if self._size is not None and self._size < len(programs):
            programs = (
                programs[: self._size]
                if self._deterministic
                else self._rng.sample(programs, self._size)
            )
        outputs = [p(**inputs) for p in programs]
        return self._reduce_fn(outputs) if self._reduce_fn is not None else outputs


class Ensemble:
    """``Ensemble(reduce_fn=majority, size=None).compile(programs)``: no LM calls."""

    def __init__(
        self,
        *,
        reduce_fn: ReduceFn | None = None,
        size: int | None = None,
        deterministic: bool = False,
        seed: int = 0,
    ) -> None:
        self.reduce_fn = reduce_fn
        self.size = size
        self.deterministic = deterministic
        self.seed = seed

    def compile(self, programs: Sequence[Module]) -> EnsembledProgram:
        return EnsembledProgram(
            [p.deepcopy() for p in programs],
            self.reduce_fn,
            self.size,
            self.deterministic,
            self.seed,
        )
