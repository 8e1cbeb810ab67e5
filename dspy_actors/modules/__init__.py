"""Modules: Predict and ChainOfThought, plain Python objects usable in-process."""

from dspy_actors.modules.chain_of_thought import ChainOfThought
from dspy_actors.modules.predict import NoLMConfiguredError, Predict
from dspy_actors.modules.react import ReAct
from dspy_actors.modules.tool_runner import ToolOutcome, ToolRunner

__all__ = [
    "ChainOfThought",
    "NoLMConfiguredError",
    "Predict",
    "ReAct",
    "ToolOutcome",
    "ToolRunner",
]
