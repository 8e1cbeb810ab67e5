"""Modules: Predict and ChainOfThought, plain Python objects usable in-process."""

from dspy_actors.modules.chain_of_thought import ChainOfThought
from dspy_actors.modules.predict import NoLMConfiguredError, Predict

__all__ = ["ChainOfThought", "NoLMConfiguredError", "Predict"]
