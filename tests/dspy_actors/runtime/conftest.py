"""Fixtures for runtime tests: apps started on the test's SimLM (stopped after), with LMs
from the plugin's ``make_lm``."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import supervisors
from dspy_actors.modules._predict import Predict
from dspy_actors.runtime.app import App
from dspy_actors.testing._polling import wait_until
from dspy_actors.testing.sim_lm import SimLM

StartApp = Callable[..., App]


@pytest.fixture
def sim(sim_lm: SimLM) -> SimLM:
    """The test's SimLM: the plugin's ``sim_lm`` under the name these tests use."""
    return sim_lm


@pytest.fixture
def start_app(make_app: StartApp) -> StartApp:
    """The plugin's ``make_app``, at most 8 LM requests in flight unless told otherwise."""

    def make(**kw: Any) -> App:
        kw.setdefault("lm_max_in_flight", 8)  # on the default event loop
        return make_app(**kw)

    return make


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


def kill_a_loop_mid_flight(app: App, sim: SimLM) -> None:
    """Serve a Predict on ``app`` (two LM loops; ``sim`` slow enough, ~0.5 s, that calls
    stay in flight), send 40 calls and kill the first loop once half of them reached the
    server: every call is answered, the loop is replaced, and the program answers after.
    Shared by the plain LM's test (test_lm_loops) and the custom LMs' (reliability)."""
    qa = app.serve("qa", Predict("question -> answer"))
    futures = [qa.submit(question=f"q{i}") for i in range(40)]
    wait_until(lambda: sim.request_count >= 20)
    loops = app.root.supervisor("lm").supervisor("workers")
    before = [info.ref for info in loops.which_children()]
    assert before[0] is not None
    supervisors.kill(before[0])
    answers = [f.result(timeout=60.0) for f in futures]
    assert all(a.answer for a in answers)
    wait_until(lambda: loops.which_children()[0].ref not in (None, before[0]))
    assert qa.call(question="after").answer


def store_location(request: pytest.FixtureRequest, sqlite_path: Path) -> Any:
    """Where a store test's store lives for its ``sqlite``/``postgres`` param: the SQLite
    file, or a fresh database on the session's PostgreSQL (skipped for a test marked
    ``sqlite_only``: a test of the SQLite file itself)."""
    if request.param == "postgres":
        if request.node.get_closest_marker("sqlite_only"):
            pytest.skip("a test of the SQLite file itself")
        return request.getfixturevalue("postgres_url")
    return sqlite_path
