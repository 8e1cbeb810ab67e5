"""Durable runs (issue 20, item 7): a run killed at any point (here: ``kill -9`` of its
process, mid-step) resumes redoing at most the LM calls in flight at the kill, because
finished LM results are journaled with the run, and it ends with the same program."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import dspy_actors as dsa
from dspy_actors.lm import LM
from dspy_actors.optimizers import BootstrapFewShot, BootstrapFewShotWithRandomSearch
from dspy_actors.runtime.runs import RunStore, start_run
from dspy_actors.testing._polling import wait_until
from dspy_actors.testing.sim_lm import SimLM
from tests.dspy_actors.optimizers.task import dataset, metric, task_lm_client, task_sim  # noqa: F401 - fixtures

TRAIN = dataset(0, 8)
DEV = dataset(12, 6)
SEED = 3
REPO = Path(__file__).resolve().parents[2]


def bootstrap() -> BootstrapFewShot:
    """One step holding all its LM calls (one thread: at most one call in flight)."""
    return BootstrapFewShot(metric, max_bootstrapped_demos=4, max_labeled_demos=0, num_threads=1)


def random_search() -> BootstrapFewShotWithRandomSearch:
    optimizer = BootstrapFewShotWithRandomSearch(
        metric, max_bootstrapped_demos=2, max_labeled_demos=2, num_candidate_programs=3,
        num_threads=2,
    )  # fmt: skip
    optimizer.step_concurrency = 1
    return optimizer


OPTIMIZERS: dict[str, Callable[[], Any]] = {"bootstrap": bootstrap, "random_search": random_search}


def student() -> dsa.Predict:
    return dsa.Predict("question -> answer")


_CHILD = """
import sys
import dspy_actors as dsa
from dspy_actors.lm import LM
from dspy_actors.runtime.runs import start_run
from tests.reliability.test_durable_runs import DEV, OPTIMIZERS, SEED, TRAIN, student

url, data_dir, kind = sys.argv[1], sys.argv[2], sys.argv[3]
lm = LM("openai/sim-task", api_base=url, api_key="k", cache=False)
app = dsa.start(lm=lm, data_dir=data_dir, lm_max_in_flight=4)
run = start_run(app, OPTIMIZERS[kind](), student(), trainset=TRAIN, valset=DEV, seed=SEED,
                run_id="d1")
run.result(300)
"""


def _journaled(db: Path, *, writer_dead: bool = False) -> int:
    # While the run's process writes, read only. Once it was killed, open read-write: a
    # read-only reader cannot replay a WAL left by a killed writer (its shared-memory index
    # is stale) and may see a snapshot short of the last commits; a writer recovers it all.
    if not db.exists():
        return 0
    mode = "rw" if writer_dead else "ro"
    try:
        with sqlite3.connect(f"file:{db}?mode={mode}", uri=True, timeout=5.0) as conn:
            (count,) = conn.execute(
                "SELECT COUNT(*) FROM run_lm_journal WHERE run_id = 'd1'"
            ).fetchone()
            return int(count)
    except sqlite3.Error:
        return 0


@pytest.mark.parametrize("kind", list(OPTIMIZERS))
def test_a_run_killed_mid_step_redoes_only_the_calls_in_flight(
    kind: str, sim: SimLM, lm: LM, tmp_path: Path
) -> None:
    # The uninterrupted run: its program and how many LM requests it takes.
    before = sim.request_count
    with dsa.start(lm=lm, data_dir=tmp_path / "reference", lm_max_in_flight=4) as app:
        reference = start_run(app, OPTIMIZERS[kind](), student(), trainset=TRAIN, valset=DEV,
                              seed=SEED, run_id="d1").result(120)  # fmt: skip
    total = sim.request_count - before
    assert total >= 6

    data_dir = tmp_path / "killed"
    db = data_dir / "runs.sqlite3"
    sim.latency = 0.03  # slow enough to kill it mid-step
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, sim.openai_base, str(data_dir), kind],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        wait_until(lambda: _journaled(db) >= total // 2 or child.poll() is not None)
        child.kill()  # SIGKILL: no cleanup of any kind
    finally:
        _, err = child.communicate(timeout=60)
    assert child.returncode == -9, err.decode()[-2000:]
    journaled = _journaled(db, writer_dead=True)
    assert total // 2 <= journaled < total
    sim.latency = 0.01

    before = sim.request_count
    with dsa.start(lm=lm, data_dir=data_dir, lm_max_in_flight=4) as app:
        run = start_run(app, OPTIMIZERS[kind](), student(), trainset=TRAIN, valset=DEV,
                        seed=SEED, run_id="d1")  # fmt: skip
        program = run.result(120)
    redone = sim.request_count - before
    # Every journaled result was replayed; only the rest (the calls in flight at the kill
    # and those never started) were made.
    assert redone == total - journaled
    assert program.dump_state() == reference.dump_state()
    store = RunStore(db)
    try:
        assert store.journal_size("d1") == total
    finally:
        store.close()
