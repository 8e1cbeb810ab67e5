"""Metrics: calling a user's metric the way DSPy does, and a few ready-made ones."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from dspy_actors.primitives.example import Example

__all__ = ["Metric", "answer_exact_match", "call_metric", "metric_score"]

Metric = Callable[..., Any]
"""``metric(example, prediction)`` or ``metric(example, prediction, trace)`` returning a
bool, a number, or a Prediction with a ``score``."""


def _accepts_trace(metric: Metric) -> bool:
    try:
        params = list(inspect.signature(metric).parameters.values())
    except (TypeError, ValueError):
        return False
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return True
    positional = [
        p
        for p in params
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    return len(positional) >= 3


def call_metric(metric: Metric, example: Example, prediction: Any, trace: Any = None) -> Any:
    """Call ``metric`` with the trace only if it takes one (DSPy metrics may or may not)."""
    if _accepts_trace(metric):
        return metric(example, prediction, trace)
    return metric(example, prediction)


def metric_score(value: Any) -> float:
    """A metric's result as a float: bools are 0/1, a Prediction gives its ``score``."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    return float(value)


def _norm(text: Any) -> str:
    return " ".join(str(text).strip().lower().split())


def answer_exact_match(example: Example, prediction: Any, trace: Any = None) -> bool:
    """True if the prediction's ``answer`` equals the example's, ignoring case and spaces."""
    return _norm(example.get("answer", "")) == _norm(getattr(prediction, "answer", None))
