"""SIMBA improves the reflective task with rules and demos, deterministically per seed;
resumes from checkpoints without redoing LM calls, also after ``kill -9`` of the process
running it under app.optimize."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

import dspy_actors as dsa
from dspy_actors.lm import LM
from dspy_actors.optimizers import SIMBA, MemoryCheckpointer
from dspy_actors.optimizers._simba import _percentile, _poisson
from dspy_actors.runtime.app import start
from dspy_actors.testing._polling import wait_until
from dspy_actors.testing.reflective_task import BASE_INSTRUCTION, dataset, metric
from tests.dspy_actors.optimizers.reflective import score, student

TRAIN = dataset(0, 24)
SEED = 3
REPO = Path(__file__).resolve().parents[3]


def make_optimizer(lm: Any = None) -> SIMBA:
    return SIMBA(metric=metric, prompt_model=lm, bsize=8, num_candidates=4, max_steps=8)


def test_simba_improves_the_task_with_rules_and_demos(task: tuple[Any, LM]) -> None:
    sim, lm = task
    program = student()
    program.lm = lm
    optimizer = make_optimizer(lm)
    ckpt = MemoryCheckpointer()
    compiled = optimizer.compile(program, trainset=TRAIN, seed=SEED, checkpointer=ckpt)
    assert score(program) < 50.0
    assert score(compiled) == 100.0
    final = [v["scores"] for k, v in ckpt.steps.items() if k.startswith("final/eval/")]
    assert "final/eval/0" in ckpt.steps  # the baseline is always a finalist
    assert max(sum(s) / len(s) for s in final) == 1.0
    # Both strategies made candidates: some carry an appended rule, some a demo.
    made = [c for k, v in ckpt.steps.items() if k.endswith("/candidates") for c in v["candidates"]]
    assert any(c["self"]["instructions"] != BASE_INSTRUCTION for c in made)
    assert any(c["self"]["demos"] for c in made)
    # Same seed, fresh run: the same program; resumed from its checkpoints: no LM call.
    again = optimizer.compile(program, trainset=TRAIN, seed=SEED)
    assert again.dump_state() == compiled.dump_state()
    before = sim.request_count
    resumed = optimizer.compile(program, trainset=TRAIN, seed=SEED, checkpointer=ckpt)
    assert sim.request_count == before
    assert resumed.dump_state() == compiled.dump_state()


def test_simba_resumes_a_partial_run(task: tuple[Any, LM]) -> None:
    sim, lm = task
    program = student()
    program.lm = lm
    before = sim.request_count
    ckpt = MemoryCheckpointer()
    full = make_optimizer(lm).compile(program, trainset=TRAIN, seed=SEED, checkpointer=ckpt)
    all_calls = sim.request_count - before
    ckpt.steps = dict(list(ckpt.steps.items())[:4])  # the run "died" after four steps
    before = sim.request_count
    resumed = make_optimizer(lm).compile(program, trainset=TRAIN, seed=SEED, checkpointer=ckpt)
    assert 0 < sim.request_count - before < all_calls
    assert resumed.dump_state() == full.dump_state()


def test_bad_settings_are_refused_clearly() -> None:
    with pytest.raises(ValueError, match="bsize"):
        SIMBA(metric=metric, bsize=0)
    optimizer = SIMBA(metric=metric, bsize=40)
    with pytest.raises(ValueError, match="too small: 24 < bsize=40"):
        optimizer.compile(student(), trainset=TRAIN)


def test_helpers_match_numpy_conventions() -> None:
    import random

    assert _percentile([0, 0, 1, 1, 1], 10) == 0.0
    assert _percentile([0, 1], 90) == pytest.approx(0.9)
    assert _percentile([3.0], 50) == 3.0
    rng = random.Random(0)
    draws = [_poisson(rng, 1.5) for _ in range(4000)]
    assert abs(sum(draws) / len(draws) - 1.5) < 0.1
    assert _poisson(rng, 0.0) == 0


_CHILD = """
import sys
import dspy_actors as dsa
from dspy_actors.lm import LM
from tests.dspy_actors.optimizers.test_simba import SEED, TRAIN, make_optimizer, student

url, data_dir = sys.argv[1], sys.argv[2]
lm = LM("openai/sim-reflective", api_base=url, api_key="k", cache=False)
app = dsa.start(lm=lm, data_dir=data_dir, lm_workers=4)
run = app.optimize(make_optimizer(), student(), trainset=TRAIN, seed=SEED, run_id="s9")
run.result(300)
"""


def _saved_steps(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1.0) as conn:
            (count,) = conn.execute("SELECT COUNT(*) FROM run_steps WHERE run_id = 's9'").fetchone()
            return int(count)
    except sqlite3.Error:
        return 0


def test_kill_9_mid_run_then_app_optimize_resumes_it(task: tuple[Any, LM], tmp_path: Path) -> None:
    sim, lm = task
    before = sim.request_count
    with dsa.context(lm=lm):
        reference = make_optimizer().compile(student(), trainset=TRAIN, seed=SEED)
    calls = sim.request_count - before
    sim.latency = 0.02  # slow enough to kill it mid-run
    data_dir = tmp_path / "shared"
    db = data_dir / "runs.sqlite3"
    before = sim.request_count
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, sim.openai_base, str(data_dir)],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        wait_until(lambda: _saved_steps(db) >= 3 or child.poll() is not None, timeout=120)
        child.kill()  # SIGKILL: no cleanup of any kind
    finally:
        _, err = child.communicate(timeout=30)
    assert child.returncode == -9, err.decode()[-2000:]
    saved = _saved_steps(db)
    assert saved >= 3
    threading.Event().wait(0.1)  # requests the dead process left in flight finish
    sim.latency = 0.0
    first_process = sim.request_count - before

    before = sim.request_count
    with start(lm=lm, data_dir=data_dir, lm_workers=4) as app:
        run = app.optimize(make_optimizer(), student(), trainset=TRAIN, seed=SEED, run_id="s9")
        assert isinstance(run, dsa.RunHandle)
        program = run.result(120)
        status = run.progress()
    resumed_calls = sim.request_count - before
    assert program.dump_state() == reference.dump_state()
    assert status.steps_restored == saved
    assert 0 < resumed_calls < calls
    assert first_process > 0


def test_an_outage_fails_the_run_clearly(task: tuple[Any, LM]) -> None:
    from dspy_actors.testing.sim_lm import Fault

    sim, lm = task
    sim.inject_rate(Fault.server_error(), rate=1.0)  # every LM call fails
    program = student()
    program.lm = lm
    optimizer = make_optimizer(lm)
    optimizer.max_errors = 3
    with pytest.raises(RuntimeError, match="more than max_errors=3"):
        optimizer.compile(program, trainset=TRAIN, seed=SEED)
