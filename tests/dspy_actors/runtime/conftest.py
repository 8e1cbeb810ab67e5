"""Fixtures for runtime tests: apps started on the test's SimLM (stopped after), with LMs
from the plugin's ``make_lm``."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dspy_actors.lm import LM
from dspy_actors.runtime.app import App, start
from dspy_actors.testing.sim_lm import SimLM

StartApp = Callable[..., App]


@pytest.fixture
def sim(sim_lm: SimLM) -> SimLM:
    """The test's SimLM: the plugin's ``sim_lm`` under the name these tests use."""
    return sim_lm


@pytest.fixture
def start_app(tmp_path: Path, make_lm: Callable[..., LM]) -> Iterator[StartApp]:
    """Start apps on the test's SimLM; every app is stopped when the test ends."""
    apps: list[App] = []

    def make(**kw: Any) -> App:
        kw.setdefault("lm", make_lm())
        kw.setdefault("data_dir", tmp_path / f"app{len(apps)}")
        kw.setdefault("lm_max_in_flight", 8)  # on the default event loop
        app = start(**kw)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.stop()


def run_in_threads(target: Callable[[int], object], count: int, timeout: float = 60.0) -> None:
    """Run ``target(i)`` in ``count`` threads at once; re-raise the first error one of them
    raised, and fail if one is still running after ``timeout`` seconds."""
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            target(i)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,), name=f"caller-{i}") for i in range(count)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    assert not any(thread.is_alive() for thread in threads), "a caller thread hung"
    if errors:
        raise errors[0]
