"""``Predictor``: the kind of parameter that calls an LM for a signature.

``Module.named_predictors``, ``predictors``, ``set_lm`` and ``get_lm`` find a program's
predictors as instances of this class, so the ``Module`` base needs to know nothing of the
library built on it: ``dspy_actors.modules.Predict`` (and every predictor built on it, such
as ``ChainOfThought``'s) is one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dspy_actors.primitives._parameter import Parameter

if TYPE_CHECKING:
    from dspy_actors.primitives.example import Example
    from dspy_actors.signatures.signature import Signature

__all__ = ["Predictor"]


class Predictor(Parameter):
    """A parameter that calls an LM for ``signature``, with ``demos`` (what it learned) and
    its own ``lm`` (None: the settings' LM) and sampling ``config``."""

    signature: type[Signature]
    demos: list[Example]
    lm: Any
    config: dict[str, Any]
