"""Fixtures for agent tests: tools that hang until the test ends, LMs on the test's SimLM."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

WAIT = 10.0  # bound on waiting for a condition; no test depends on it passing


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    """Hung tools wait on this; it is released when the test ends so their threads end."""
    event = threading.Event()
    yield event
    event.set()
