"""Fixtures of the reliability suite (the harness's own come from its pytest plugin)."""

from collections.abc import Iterator

import pytest

import supervisors
from tests.reliability.programs import start_app  # noqa: F401


@pytest.fixture(autouse=True)
def quiet_supervision_logs() -> Iterator[None]:
    """Chaos makes thousands of exits; logging each one (the default warning level) only
    slows the suite down. Escalations still log (error)."""
    supervisors.set_log_level("error")
    yield
    supervisors.set_log_level("warning")
