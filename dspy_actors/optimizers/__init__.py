"""Optimizers: compile a program against a metric (DSPy's names), as resumable step plans."""

from dspy_actors.optimizers.base import (
    Cancelled,
    Checkpointer,
    MemoryCheckpointer,
    NullCheckpointer,
    Optimizer,
    Plan,
    PlanRunner,
    RunContext,
    Step,
    StepEvent,
    execute,
    step_rng,
)
from dspy_actors.optimizers.bootstrap import BootstrapFewShot, LabeledFewShot
from dspy_actors.optimizers.random_search import BootstrapFewShotWithRandomSearch

__all__ = [
    "BootstrapFewShot",
    "BootstrapFewShotWithRandomSearch",
    "Cancelled",
    "Checkpointer",
    "LabeledFewShot",
    "MemoryCheckpointer",
    "NullCheckpointer",
    "Optimizer",
    "Plan",
    "PlanRunner",
    "RunContext",
    "Step",
    "StepEvent",
    "execute",
    "step_rng",
]
