"""``majority``: the most common answer among completions (DSPy's ``dspy.majority``)."""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from dspy_actors.primitives.prediction import Completions, Prediction

__all__ = ["default_normalize", "majority", "normalize_text"]

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)


def normalize_text(text: str) -> str:
    """Lowercased, without punctuation, articles (a, an, the) or extra spaces: how answers
    are compared for exact match."""
    text = unicodedata.normalize("NFD", text).lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def default_normalize(value: Any) -> str | None:
    """``normalize_text``, with an empty result as None (such a completion is not counted)."""
    return normalize_text(str(value)) or None


def majority(
    prediction_or_completions: Prediction | Completions | Sequence[Mapping[str, Any]],
    normalize: Callable[[Any], Any] | None = default_normalize,
    field: str | None = None,
) -> Prediction:
    """The completion whose ``field`` (default: the last output field) is most common after
    ``normalize``; completions it maps to None are not counted (unless all are); among
    equally common values, the earliest wins. Takes a Prediction (its completions), a
    ``Completions`` or a list of predictions or dicts."""
    if isinstance(prediction_or_completions, Prediction):
        completions: list[Any] = list(prediction_or_completions.completions)
    elif isinstance(prediction_or_completions, Completions):
        completions = list(prediction_or_completions)
    elif isinstance(prediction_or_completions, list | tuple):
        completions = [c for c in prediction_or_completions if c is not None]
    else:
        raise TypeError(
            "majority() takes a Prediction, Completions or a list of predictions, not "
            f"{type(prediction_or_completions).__name__}"
        )
    if not completions:
        raise ValueError("majority() needs at least one completion")
    key = field or list(completions[0].keys())[-1]
    missing = [i for i, c in enumerate(completions) if key not in c]
    if missing:
        raise ValueError(f"majority(): completions {missing} have no field {key!r}")
    norm = normalize or (lambda v: v)
    values = [norm(c[key]) for c in completions]
    counted = [v for v in values if v is not None] or values
    counts: dict[Any, int] = {}
    for value in counted:
        counts[value] = counts.get(value, 0) + 1
    top = max(counts.values())
    winner = next(v for v in counted if counts[v] == top)
    chosen = completions[values.index(winner)]
    return Prediction.from_completions([dict(chosen)])
