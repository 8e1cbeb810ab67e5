"""Completing a reply future exactly once, from any thread, whatever the caller did to it."""

from __future__ import annotations

from concurrent.futures import Future, InvalidStateError
from typing import Any


def resolve(future: Future[Any], value: Any) -> bool:
    """Set ``value`` unless the future is already done or cancelled; True if it was set."""
    try:
        future.set_result(value)
    except InvalidStateError:
        return False
    return True


def reject(future: Future[Any], error: BaseException) -> bool:
    """Set ``error`` unless the future is already done or cancelled; True if it was set."""
    try:
        future.set_exception(error)
    except InvalidStateError:
        return False
    return True
