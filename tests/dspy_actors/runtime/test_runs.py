"""Optimization runs under the app's ``runs`` supervisor: progress, checkpoints, resume after
a killed driver, after cancel, and after ``kill -9`` of the whole process."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import dspy_actors as dsa
import supervisors
from dspy_actors.lm import LM
from dspy_actors.optimizers import BootstrapFewShotWithRandomSearch
from dspy_actors.runtime.app import App, start
from dspy_actors.runtime.runs import RunCancelled, RunFailed, RunStore, cancel_all, start_run
from dspy_actors.testing._polling import wait_until
from dspy_actors.testing.sim_lm import Fault, SimLM
from tests.dspy_actors.optimizers.task import dataset, metric, task_lm_client, task_sim  # noqa: F401 - fixtures

TRAIN = dataset(0, 8)
DEV = dataset(12, 6)
SEED = 3
STEPS = [f"candidate/{i}" for i in range(-3, 3)]
REPO = Path(__file__).resolve().parents[3]


def make_optimizer() -> BootstrapFewShotWithRandomSearch:
    optimizer = BootstrapFewShotWithRandomSearch(
        metric, max_bootstrapped_demos=2, max_labeled_demos=2, num_candidate_programs=3,
        num_threads=2,
    )  # fmt: skip
    # One candidate per driver message: kills and cancels land between candidates.
    optimizer.step_concurrency = 1
    return optimizer


def student() -> dsa.Predict:
    return dsa.Predict("question -> answer")


@pytest.fixture
def reference(sim: SimLM, lm: LM) -> tuple[dict[str, Any], int]:
    """The uninterrupted in-process result and how many LM requests it took."""
    before = sim.request_count
    with dsa.context(lm=lm):
        program = make_optimizer().compile(student(), trainset=TRAIN, valset=DEV, seed=SEED)
    return program.dump_state(), sim.request_count - before


@pytest.fixture
def app(lm: LM, tmp_path: Path, make_app: Callable[..., App]) -> App:
    return make_app(lm=lm, data_dir=tmp_path / "data", lm_workers=4)


def test_run_reports_progress_checkpoints_and_matches_compile(
    app: App, sim: SimLM, reference: tuple[dict[str, Any], int]
) -> None:
    state, _ = reference
    events: list[Any] = []
    app.subscribe("run.progress", events.append)
    pool_calls: list[Any] = []
    app.subscribe("lm.start", pool_calls.append)
    requests_before = sim.request_count
    lm_usage_before = app.lm.usage.prompt_tokens
    run = start_run(app, make_optimizer(), student(), trainset=TRAIN, valset=DEV, seed=SEED,
                    run_id="r1")  # fmt: skip
    program = run.result(60)
    assert program.dump_state() == state
    status = run.progress()
    assert status.state == "done"
    assert status.steps_run == len(STEPS)
    assert status.best_score == 100.0
    assert status.attempts == 1
    # Every LM call the run made is in its usage (the LM's total saw nothing else).
    assert status.usage.calls == sim.request_count - requests_before > 0
    assert status.usage.prompt_tokens == app.lm.usage.prompt_tokens - lm_usage_before
    store = RunStore(app.config.data_dir / "runs.sqlite3")
    try:
        assert store.steps("r1") == STEPS
        assert store.status("r1") == "done"
    finally:
        store.close()
    app.events.flush(timeout=5.0)
    # The run's LM calls went through the app's LM pool (bounded by its workers).
    assert len(pool_calls) == sim.request_count - requests_before > 0
    assert [e.message for e in events] == [f"finished {s}" for s in STEPS]
    assert events[-1].completed == len(STEPS)
    assert events[-1].run_id == "r1"
    # A finished run's subtree is removed from `runs`.
    wait_until(lambda: not app.root.supervisor("runs").which_children())
    # The compiled program goes into a served program while it serves.
    handle = app.serve("reverse", student())
    assert handle.call(question="Reverse the word: abc").answer == "unknown"
    handle.upgrade(program)
    assert handle.call(question="Reverse the word: abc").answer == "cba"

    # Starting the finished run again restores every step: no LM call.
    before = sim.request_count
    again = start_run(app, make_optimizer(), student(), trainset=TRAIN, valset=DEV, seed=SEED,
                      run_id="r1")  # fmt: skip
    assert again.result(60).dump_state() == state
    assert sim.request_count == before
    assert again.progress().steps_restored == len(STEPS)
    assert again.progress().usage.calls == 0


def test_killed_driver_is_restarted_and_resumes_from_its_checkpoint(
    app: App, sim: SimLM, reference: tuple[dict[str, Any], int]
) -> None:
    state, calls = reference
    before = sim.request_count
    run = start_run(app, make_optimizer(), student(), trainset=TRAIN, valset=DEV, seed=SEED,
                    run_id="k1")  # fmt: skip
    wait_until(lambda: run.progress().steps_run >= 2)
    ref = run.driver()
    assert ref is not None
    supervisors.kill(ref)
    program = run.result(60)
    status = run.progress()
    assert status.attempts == 2  # restarted once by the run's supervisor
    assert status.steps_restored >= 2
    assert status.steps_run + status.steps_restored > len(STEPS)
    assert program.dump_state() == state
    # The step in flight when the kill came finished first, so nothing was redone.
    assert sim.request_count - before == calls


def test_cancel_stops_the_run_and_a_restart_with_its_id_finishes_it(
    app: App, sim: SimLM, reference: tuple[dict[str, Any], int]
) -> None:
    state, calls = reference
    before = sim.request_count
    run = start_run(app, make_optimizer(), student(), trainset=TRAIN, valset=DEV, seed=SEED,
                    run_id="c1")  # fmt: skip
    wait_until(lambda: run.progress().steps_run >= 1)
    assert run.cancel(timeout=30)
    with pytest.raises(RunCancelled):
        run.result(5)
    assert run.progress().state == "cancelled"
    wait_until(lambda: not app.root.supervisor("runs").which_children())
    cancelled_calls = sim.request_count - before
    before = sim.request_count
    resumed = start_run(app, make_optimizer(), student(), trainset=TRAIN, valset=DEV, seed=SEED,
                        run_id="c1")  # fmt: skip
    with pytest.raises(ValueError, match="already running"):
        start_run(app, make_optimizer(), student(), trainset=TRAIN, valset=DEV, seed=SEED,
                  run_id="c1")  # fmt: skip
    assert resumed.result(60).dump_state() == state
    assert resumed.progress().steps_restored >= 1
    assert cancelled_calls > 0
    assert sim.request_count - before < calls


_CHILD = """
import sys
import dspy_actors as dsa
from dspy_actors.lm import LM
from dspy_actors.runtime.runs import start_run
from tests.dspy_actors.runtime.test_runs import DEV, SEED, TRAIN, make_optimizer, student

url, data_dir, store = sys.argv[1], sys.argv[2], sys.argv[3] or None
lm = LM("openai/sim-task", api_base=url, api_key="k", cache=False)
app = dsa.start(lm=lm, data_dir=data_dir, lm_workers=4, store=store)
run = start_run(app, make_optimizer(), student(), trainset=TRAIN, valset=DEV, seed=SEED,
                run_id="p1")
run.result(120)
"""


def _saved_steps(db: Path | str) -> int:
    if isinstance(db, str):  # a PostgreSQL URL
        import psycopg

        try:
            with psycopg.connect(db, connect_timeout=5) as conn:
                row = conn.execute("SELECT COUNT(*) FROM run_steps WHERE run_id = 'p1'").fetchone()
                return 0 if row is None else int(row[0])
        except psycopg.Error:  # no table yet
            return 0
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1.0) as conn:
            (count,) = conn.execute("SELECT COUNT(*) FROM run_steps WHERE run_id = 'p1'").fetchone()
            return int(count)
    except sqlite3.Error:
        return 0


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_kill_9_of_the_process_then_resume_in_another(
    sim: SimLM,
    lm: LM,
    tmp_path: Path,
    reference: tuple[dict[str, Any], int],
    backend: str,
    request: pytest.FixtureRequest,
) -> None:
    """The run's process killed; another process (another replica, for PostgreSQL: its
    own data dir, only the database shared) resumes it from the checkpoints."""
    state, calls = reference
    sim.latency = 0.04  # slow enough to kill it mid-run
    data_dir = tmp_path / "shared"
    store: str | None = None
    db: Path | str = data_dir / "runs.sqlite3"
    if backend == "postgres":
        store = db = request.getfixturevalue("postgres_url")
    before = sim.request_count
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, sim.openai_base, str(data_dir), store or ""],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        wait_until(lambda: _saved_steps(db) >= 2 or child.poll() is not None, timeout=60)
        child.kill()  # SIGKILL: no cleanup of any kind
    finally:
        _, err = child.communicate(timeout=30)
    assert child.returncode == -9, err.decode()[-2000:]
    saved = _saved_steps(db)
    assert 2 <= saved < len(STEPS)
    threading.Event().wait(0.1)  # requests the dead process left in flight finish
    sim.latency = 0.01
    first_process = sim.request_count - before

    before = sim.request_count
    resumer_dir = data_dir if store is None else tmp_path / "other-replica"
    with start(lm=lm, data_dir=resumer_dir, lm_workers=4, store=store) as app:
        run = start_run(app, make_optimizer(), student(), trainset=TRAIN, valset=DEV,
                        seed=SEED, run_id="p1")  # fmt: skip
        program = run.result(60)
        status = run.progress()
    resumed_calls = sim.request_count - before
    assert program.dump_state() == state
    assert status.steps_restored == saved
    assert 0 < resumed_calls < calls
    assert first_process > 0


def test_a_driver_that_keeps_crashing_fails_the_run(app: App, sim: SimLM) -> None:
    sim.inject_rate(Fault.server_error(), rate=1.0)  # every LM call fails: every step crashes
    optimizer = make_optimizer()
    optimizer.max_errors = 2
    run = start_run(app, optimizer, student(), trainset=TRAIN, valset=DEV, seed=SEED,
                    run_id="f1", intensity=2, period=60.0)  # fmt: skip
    with pytest.raises(RunFailed, match="f1"):
        run.result(60)
    status = run.progress()
    assert status.state == "failed"
    assert status.attempts == 3  # the first start and two restarts, then the supervisor gave up
    wait_until(lambda: not app.root.supervisor("runs").which_children())


def test_cancel_all_stops_a_run_busy_inside_a_step(app: App, sim: SimLM) -> None:
    sim.latency = 0.2
    run = start_run(app, make_optimizer(), student(), trainset=TRAIN, valset=DEV, seed=SEED,
                    run_id="s1")  # fmt: skip
    wait_until(lambda: sim.request_count > 0)
    assert cancel_all(app, timeout=30) == 1
    with pytest.raises(RunCancelled):
        run.result(1)
    assert run.progress().steps_run == 0  # stopped inside its first step
