"""Metrics: calling a user's metric the way DSPy does, and a few ready-made ones."""

from __future__ import annotations

import inspect
import re
import string
import unicodedata
from collections import Counter
from collections.abc import Callable
from typing import Any

from dspy_actors.primitives.example import Example

__all__ = [
    "Metric",
    "answer_exact_match",
    "call_metric",
    "metric_name",
    "metric_score",
    "normalize_text",
]

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


def metric_name(metric: Metric) -> str:
    """The column name of a metric's score in saved results (DSPy's: a function's name,
    else the class name of a callable object)."""
    if inspect.isfunction(metric) or inspect.ismethod(metric):
        return metric.__name__
    return type(metric).__name__


_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_text(text: Any) -> str:
    """SQuAD's normalisation, which DSPy's metrics and ``majority`` use: lower case, no
    punctuation, no articles ("a", "an", "the"), single spaces."""
    lowered = unicodedata.normalize("NFD", str(text)).lower()
    no_punct = "".join(ch for ch in lowered if ch not in string.punctuation)
    return " ".join(_ARTICLES.sub(" ", no_punct).split())


def _f1(gold: str, guess: str) -> float:
    gold_tokens, guess_tokens = gold.split(), guess.split()
    common = Counter(gold_tokens) & Counter(guess_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(guess_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def answer_exact_match(
    example: Example, prediction: Any, trace: Any = None, frac: float = 1.0
) -> bool:
    """True if the prediction's ``answer`` equals the example's, ignoring case, spaces and
    punctuation; the example's answer may be a list of accepted answers (any one matches).
    ``frac`` below 1.0 accepts a token-overlap F1 of at least ``frac`` instead, as DSPy."""
    golds = example.get("answer", "")
    golds = list(golds) if isinstance(golds, list | tuple) else [golds]
    guess = getattr(prediction, "answer", None)
    if frac >= 1.0:
        return any(normalize_text(g) == normalize_text(guess) for g in golds)
    return max((_f1(normalize_text(g), normalize_text(guess)) for g in golds), default=0.0) >= frac
