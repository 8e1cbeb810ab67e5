"""``Ensemble``: one program that runs several and reduces their outputs."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

from dspy_actors.modules.aggregation import majority  # DSPy's dspy.majority, re-exported
from dspy_actors.primitives.module import Module

__all__ = ["Ensemble", "EnsembledProgram", "majority"]

ReduceFn = Callable[[list[Any]], Any]


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
