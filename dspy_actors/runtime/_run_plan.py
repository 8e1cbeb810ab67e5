"""What a run needs of an optimizer: the contract between the runs (runs.py: supervised,
checkpointed, resumable) and the optimizers above the runtime that they drive.

The runtime does not know how an optimizer works. On each start of a run's driver (the
first, and every restart) it hands the optimizer a :class:`RunSetup` and gets back a
:class:`RunAttempt`, which it advances one step per message until the attempt says
``"done"`` (or ``"cancelled"``). Everything an optimizer decides stays above: its plan of
steps, how a step fans its examples out, what a cancelled evaluation raises, and where the
examples run (``executor``; with none given, ``app_config.ray_address``'s cluster).
``dspy_actors.optimizers.Optimizer`` implements :class:`RunnableOptimizer`::

    attempt = optimizer.start_attempt(setup)
    while (state := attempt.advance()) == "more":
        ...  # the run's driver: one advance per message, so a cancel is seen in between
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from dspy_actors.primitives.example import Example
from dspy_actors.primitives.module import Module
from dspy_actors.runtime._app_config import AppConfig

__all__ = [
    "AttemptState",
    "Checkpointer",
    "RunAttempt",
    "RunSetup",
    "RunnableOptimizer",
    "StepReport",
]

AttemptState = Literal["more", "done", "cancelled"]
"""What one :meth:`RunAttempt.advance` left: steps to go, the program made, or stopped
because the run's cancel flag was set."""


class Checkpointer(Protocol):
    """Where a run's finished steps' results are kept between attempts (_run_store.py's
    ``SqliteCheckpointer`` is one)."""

    def load(self, step: str) -> dict[str, Any] | None: ...

    def save(self, step: str, data: dict[str, Any]) -> None: ...


class StepReport(Protocol):
    """Reported after each step: its name, whether it came from a checkpoint, how many
    steps are finished, and its result (``score`` and ``progress`` keys are shown)."""

    @property
    def step(self) -> str: ...
    @property
    def restored(self) -> bool: ...
    @property
    def completed(self) -> int: ...
    @property
    def data(self) -> Mapping[str, Any]: ...


@dataclass(frozen=True)
class RunSetup:
    """What one attempt of a run starts from: the student (a private copy) and data, the
    run's seed and cancel flag, its checkpointer and step callback; ``executor`` the run's
    executor as given to ``start_run`` (None: the app's default); ``app`` the app the run
    is in and ``app_config`` its settings (an optimizer may keep one executor per app)."""

    student: Module
    trainset: list[Example]
    valset: list[Example] | None
    seed: int
    cancel: threading.Event
    checkpointer: Checkpointer
    on_step: Callable[[StepReport], None]
    executor: Any
    app: object
    app_config: AppConfig


class RunAttempt(Protocol):
    """One attempt of a run: its plan, advanced one step (or one wave of steps) at a time;
    nothing is in flight between two calls."""

    def advance(self) -> AttemptState:
        """Run (or restore from the checkpointer) the next step."""
        ...

    def result(self) -> Module:
        """The compiled program, once :meth:`advance` has said ``"done"``."""
        ...

    def close(self) -> None:
        """Give up the attempt (its driver is stopping)."""
        ...


class RunnableOptimizer(Protocol):
    """An optimizer a run can drive (``app.optimize(optimizer, ...)``)."""

    def start_attempt(self, setup: RunSetup) -> RunAttempt:
        """A fresh attempt of the run ``setup`` describes: steps already checkpointed are
        restored, not run again."""
        ...
