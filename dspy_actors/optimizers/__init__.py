"""Optimizers: compile a program against a metric (DSPy's names), as resumable step plans."""

from dspy_actors.optimizers._base import (
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
from dspy_actors.optimizers._bootstrap import BootstrapFewShot, LabeledFewShot
from dspy_actors.optimizers._copro import COPRO
from dspy_actors.optimizers._ensemble import Ensemble, EnsembledProgram, majority
from dspy_actors.optimizers._gepa import GEPA
from dspy_actors.optimizers._knn import Embedder, KNNFewShot, KNNFewShotProgram
from dspy_actors.optimizers._mipro import MIPROv2
from dspy_actors.optimizers._random_search import BootstrapFewShotWithRandomSearch
from dspy_actors.optimizers._simba import SIMBA

__all__ = [
    "COPRO",
    "GEPA",
    "SIMBA",
    "BootstrapFewShot",
    "BootstrapFewShotWithRandomSearch",
    "Cancelled",
    "Checkpointer",
    "Embedder",
    "Ensemble",
    "EnsembledProgram",
    "KNNFewShot",
    "KNNFewShotProgram",
    "LabeledFewShot",
    "MIPROv2",
    "MemoryCheckpointer",
    "NullCheckpointer",
    "Optimizer",
    "Plan",
    "PlanRunner",
    "RunContext",
    "Step",
    "StepEvent",
    "execute",
    "majority",
    "step_rng",
]
