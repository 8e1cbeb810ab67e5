"""LM clients over httpx: providers, errors, retries, cache, usage."""

from dspy_actors.lm._lm import LM, LMStats
from dspy_actors.lm._retry import RetryPolicy
from dspy_actors.lm._types import LMResponse, StreamEvent
from dspy_actors.lm._usage import Usage, UsageMeter, metering, record_usage
from dspy_actors.lm.errors import (
    AuthenticationError,
    BadRequest,
    ContextWindowExceeded,
    LMConnectionError,
    LMError,
    LMTimeout,
    MalformedResponse,
    RateLimited,
    ServerError,
)

__all__ = [
    "LM",
    "AuthenticationError",
    "BadRequest",
    "ContextWindowExceeded",
    "LMConnectionError",
    "LMError",
    "LMResponse",
    "LMStats",
    "LMTimeout",
    "MalformedResponse",
    "RateLimited",
    "RetryPolicy",
    "ServerError",
    "StreamEvent",
    "Usage",
    "UsageMeter",
    "metering",
    "record_usage",
]

# DSPy's base class for an LM of your own (forward/aforward).
from dspy_actors.lm._base_lm import BaseLM, LMForwardError

__all__ += ["BaseLM", "LMForwardError"]

# dsa.configure(lm=...) / dsa.context(lm=...) refuse an LM subclass whose forward() dsa.LM
# would skip: _settings, below this layer, is handed the check.
from dspy_actors import _settings  # noqa: E402
from dspy_actors.lm._misplaced_forward import refuse_misplaced_forward  # noqa: E402

_settings.set_lm_check(refuse_misplaced_forward)
