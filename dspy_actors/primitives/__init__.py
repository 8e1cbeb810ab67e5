"""Primitives: examples, predictions, and the Module base class."""

from dspy_actors.primitives.example import Example
from dspy_actors.primitives.jsonable import to_jsonable
from dspy_actors.primitives.module import Module
from dspy_actors.primitives.parameter import Parameter, StateError
from dspy_actors.primitives.prediction import Completions, Prediction
from dspy_actors.primitives.predictor import Predictor

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
