"""Modules: Predict, ChainOfThought and the rest of DSPy's library (``majority`` lives with
Ensemble in :mod:`dspy_actors.optimizers`, and at the top level), plain Python objects
usable in-process and served by the actor runtime."""

from dspy_actors.modules._best_of_n import BestOfN
from dspy_actors.modules._chain_of_thought import ChainOfThought
from dspy_actors.modules._multi_chain_comparison import MultiChainComparison
from dspy_actors.modules._parallel import Parallel, ParallelError
from dspy_actors.modules._predict import NoLMConfiguredError, Predict
from dspy_actors.modules._react import ReAct
from dspy_actors.modules._refine import Refine
from dspy_actors.modules.tool_runner import ToolOutcome, ToolRunner

__all__ = [
    "BestOfN",
    "ChainOfThought",
    "MultiChainComparison",
    "NoLMConfiguredError",
    "Parallel",
    "ParallelError",
    "Predict",
    "ReAct",
    "Refine",
    "ToolOutcome",
    "ToolRunner",
]
