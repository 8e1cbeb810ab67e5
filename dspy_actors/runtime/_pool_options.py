"""Checks of ``dsa.start(breaker=..., rate_limit=...)``, made before any actor starts.

The options are passed on to a ``CircuitBreaker`` and a ``RateLimiter`` built inside the
LM supervisor's tree. Unchecked, a bad key or value only fails there, in the router's or
a worker's start, over and over (a crash loop the app then gives up on, far from the
``start`` call that caused it). So ``start`` builds one of each here, the same way, and
turns a refusal into a ``ValueError`` naming the option, the key and what is allowed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dspy_actors.lm._breaker import CircuitBreaker
from dspy_actors.lm._rate_limit import RateLimiter

__all__ = ["BREAKER_OPTIONS", "RATE_LIMIT_OPTIONS", "check_breaker", "check_rate_limit"]

# What each key accepts (the constructors' own checks say the same when a value is wrong).
BREAKER_OPTIONS: dict[str, str] = {
    "window_size": "an int >= 1",
    "minimum_calls": "an int >= 1, at most window_size",
    "failure_rate_threshold": "a number in (0, 1]",
    "slow_call_duration": "seconds > 0",
    "slow_call_rate_threshold": "a number in (0, 1]",
    "wait_in_open": "finite seconds >= 0",
    "half_open_permitted_calls": "an int >= 1",
}
RATE_LIMIT_OPTIONS: dict[str, str] = {
    "requests_per_second": "a number > 0",
    "burst": "a number >= 1 (needs requests_per_second)",
    "tokens_per_minute": "a number > 0",
    "token_burst": "a number > 0 (needs tokens_per_minute)",
}


def _allowed(options: Mapping[str, str]) -> str:
    return "; ".join(f"{key}: {what}" for key, what in options.items())


def _check_keys(where: str, given: object, options: Mapping[str, str]) -> dict[str, Any]:
    if not isinstance(given, Mapping):
        raise TypeError(f"{where} must be a dict of options, got {type(given).__name__}")
    unknown = [key for key in given if key not in options]
    if unknown:
        raise ValueError(
            f"{where}: unknown option {', '.join(repr(k) for k in unknown)}; "
            f"allowed: {_allowed(options)}"
        )
    return dict(given)


def check_breaker(breaker: object) -> dict[str, Any]:
    """``breaker`` as the options every deployment's ``CircuitBreaker`` is built with;
    ValueError (TypeError for a non-dict) naming the key and its allowed values."""
    where = "dsa.start(breaker=...)"
    options = _check_keys(where, breaker, BREAKER_OPTIONS)
    try:
        CircuitBreaker(name="check", **options)
    except ValueError as error:
        raise ValueError(f"{where}: {error}; allowed: {_allowed(BREAKER_OPTIONS)}") from None
    return options


def check_rate_limit(rate_limit: object) -> dict[str, Any]:
    """``rate_limit`` as the options every deployment's ``RateLimiter`` is built with;
    ValueError (TypeError for a non-dict) naming the key and its allowed values."""
    where = "dsa.start(rate_limit=...)"
    options = _check_keys(where, rate_limit, RATE_LIMIT_OPTIONS)
    try:
        RateLimiter(**options)
    except ValueError as error:
        raise ValueError(f"{where}: {error}; allowed: {_allowed(RATE_LIMIT_OPTIONS)}") from None
    return options
