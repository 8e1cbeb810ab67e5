"""Primitives: examples, predictions, and the Module base class."""

from dspy_actors.primitives._jsonable import to_jsonable
from dspy_actors.primitives._parameter import Parameter, StateError
from dspy_actors.primitives._predictor import Predictor
from dspy_actors.primitives.example import Example
from dspy_actors.primitives.module import Module
from dspy_actors.primitives.prediction import Completions, Prediction

__all__ = [
    "Completions",
    "Example",
    "Module",
    "Parameter",
    "Prediction",
    "Predictor",
    "StateError",
    "to_jsonable",
]
