"""LM clients over httpx: providers, errors, retries, cache, usage."""

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
from dspy_actors.lm.lm import LM, LMStats
from dspy_actors.lm.retry import RetryPolicy
from dspy_actors.lm.types import LMResponse, StreamEvent
from dspy_actors.lm.usage import Usage, UsageMeter, metering, record_usage

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
