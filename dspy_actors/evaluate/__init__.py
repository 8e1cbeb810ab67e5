"""Evaluation: ``Evaluate`` a program over a devset with a metric, in parallel."""

from dspy_actors.evaluate._parallel import Cancelled, parallel_map
from dspy_actors.evaluate._result import EvaluationResult, ExampleResult
from dspy_actors.evaluate.evaluate import Evaluate, EvaluationError, ProgressCallback
from dspy_actors.evaluate.metrics import Metric, answer_exact_match, call_metric, metric_score

__all__ = [
    "Cancelled",
    "Evaluate",
    "EvaluationError",
    "EvaluationResult",
    "ExampleResult",
    "Metric",
    "ProgressCallback",
    "answer_exact_match",
    "call_metric",
    "metric_score",
    "parallel_map",
]
