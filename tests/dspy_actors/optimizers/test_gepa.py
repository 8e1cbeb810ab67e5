"""GEPA learns the reflective task's rules from metric feedback, deterministically per seed;
resumes from checkpoints without LM calls; merges frontier candidates; runs under app.optimize
and survives a killed driver."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

import dspy_actors as dsa
import supervisors
from dspy_actors.lm import LM
from dspy_actors.optimizers import GEPA, MemoryCheckpointer
from dspy_actors.optimizers._gepa import _Pool, auto_budget
from dspy_actors.runtime.app import start
from dspy_actors.runtime.runs import start_run
from dspy_actors.testing._polling import wait_until
from dspy_actors.testing.reflective_task import (
    BASE_INSTRUCTION,
    RULES,
    dataset,
    metric,
)
from tests.dspy_actors.optimizers.reflective import score, student

TRAIN = dataset(0, 12)
VAL = dataset(12, 12)


def test_gepa_carries_what_feedback_taught_into_the_instruction(task: tuple[Any, LM]) -> None:
    sim, lm = task
    program = student()
    program.lm = lm
    optimizer = GEPA(metric, reflection_lm=lm, max_metric_calls=120, seed=1)
    ckpt = MemoryCheckpointer()
    compiled = optimizer.compile(program, trainset=TRAIN, valset=VAL, checkpointer=ckpt)
    instructions = compiled.signature.instructions
    assert all(rule in instructions for rule in RULES.values()), instructions
    assert score(compiled) == 100.0
    assert score(program) < 80.0
    assert ckpt.steps["seed/eval"]["score"] < 100.0
    accepted = [k for k in ckpt.steps if k.endswith("/full_eval")]
    assert accepted, "no reflective child was accepted"
    # Every accepted child beat its parent on the same minibatch.
    for name in accepted:
        it = name.split("/")[0]
        child = ckpt.steps[f"{it}/propose"]["child_scores"]
        parents = [v for k, v in ckpt.steps.items() if k.startswith(f"{it}/minibatch/")]
        assert any(sum(child) > sum(p["scores"]) for p in parents)
    # Same seed, fresh run: the same program. Resumed from its checkpoints: no LM call.
    again = optimizer.compile(program, trainset=TRAIN, valset=VAL, seed=1)
    assert again.dump_state() == compiled.dump_state()
    before = sim.request_count
    resumed = optimizer.compile(program, trainset=TRAIN, valset=VAL, seed=1, checkpointer=ckpt)
    assert sim.request_count == before
    assert resumed.dump_state() == compiled.dump_state()


def test_gepa_resumes_a_partial_run_without_redoing_finished_steps(task: tuple[Any, LM]) -> None:
    sim, lm = task
    program = student()
    program.lm = lm
    optimizer = GEPA(metric, reflection_lm=lm, max_metric_calls=80, seed=2)
    before = sim.request_count
    full = optimizer.compile(program, trainset=TRAIN, valset=VAL, checkpointer=MemoryCheckpointer())
    all_calls = sim.request_count - before
    ckpt = MemoryCheckpointer()
    optimizer.compile(program, trainset=TRAIN, valset=VAL, checkpointer=ckpt)
    # Keep only the first three steps, as if the run died there.
    kept = dict(list(ckpt.steps.items())[:3])
    ckpt.steps = kept
    before = sim.request_count
    resumed = optimizer.compile(program, trainset=TRAIN, valset=VAL, checkpointer=ckpt)
    assert 0 < sim.request_count - before < all_calls
    assert resumed.dump_state() == full.dump_state()


def test_lookahead_changes_rounds_not_results(task: tuple[Any, LM]) -> None:
    """Evaluating upcoming iterations' parents at once gives the sequential algorithm's run:
    the same accepted children, the same program."""
    _sim, lm = task
    program = student()
    program.lm = lm
    runs = {}
    for lookahead in (1, 8):
        ckpt = MemoryCheckpointer()
        optimizer = GEPA(metric, reflection_lm=lm, max_metric_calls=90, lookahead=lookahead)
        compiled = optimizer.compile(program, trainset=TRAIN, valset=VAL, checkpointer=ckpt)
        accepted = {k: v["candidate"] for k, v in ckpt.steps.items() if k.endswith("full_eval")}
        proposals = sorted(k for k in ckpt.steps if k.endswith("/propose"))
        runs[lookahead] = (compiled.dump_state(), accepted, proposals)
    assert runs[1] == runs[8]


def test_budget_settings_follow_dspy() -> None:
    lm = object()
    assert GEPA(metric, reflection_lm=lm, max_metric_calls=50).budget(1, 10, 5) == 50
    assert GEPA(metric, reflection_lm=lm, max_full_evals=3).budget(1, 10, 5) == 45
    assert GEPA(metric, reflection_lm=lm, max_full_evals=3).budget(1, 10, None) == 30
    # DSPy 3.4.1: auto="light", one predictor, 12 validation examples.
    assert auto_budget(1, 6, 12) == 428  # dspy GEPA.auto_budget(1, 6, 12) in DSPy 3.4.1
    assert auto_budget(2, 12, 30) == 1250  # and (2, 12, 30)
    assert GEPA(metric, reflection_lm=lm, auto="light").budget(1, 10, 12) == auto_budget(1, 6, 12)
    with pytest.raises(ValueError, match="exactly one budget"):
        GEPA(metric, reflection_lm=lm)
    with pytest.raises(ValueError, match="exactly one budget"):
        GEPA(metric, reflection_lm=lm, auto="light", max_metric_calls=10)
    with pytest.raises(ValueError, match="auto= is one of"):
        GEPA(metric, reflection_lm=lm, auto="huge")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="reflection_lm"):
        GEPA(metric, max_metric_calls=10)


def test_the_budget_bounds_metric_calls(task: tuple[Any, LM]) -> None:
    _sim, lm = task
    program = student()
    program.lm = lm
    ckpt = MemoryCheckpointer()
    # lookahead=1: every minibatch evaluation made is one the run counts.
    GEPA(metric, reflection_lm=lm, max_metric_calls=40, lookahead=1).compile(
        program, trainset=TRAIN, valset=VAL, checkpointer=ckpt
    )
    calls = 0
    for data in ckpt.steps.values():
        calls += len(data.get("scores") or data.get("child_scores") or [])
    # It stops at the first check past the budget; an accepted child is still scored on
    # the validation set (as gepa does).
    assert 40 <= calls < 40 + len(VAL) + 2 * 3


def test_merge_combines_what_two_frontier_candidates_changed() -> None:
    pool = _Pool(val_size=4)
    pool.add({"a": "A0", "b": "B0"}, [0, 0, 0, 0], parents=[])
    pool.add({"a": "A1", "b": "B0"}, [1, 1, 0, 0], parents=[0])
    pool.add({"a": "A0", "b": "B2"}, [0, 0, 1, 1], parents=[0])
    assert sorted(pool.frontier()) == [1, 2]
    found = pool.merge_candidate(random.Random(0), set())
    assert found is not None
    merged, i, j, ids = found
    assert merged == {"a": "A1", "b": "B2"}
    assert {i, j} == {1, 2}
    assert ids == [0, 1, 2, 3]
    # A pair already tried is not tried again; nothing else qualifies.
    assert pool.merge_candidate(random.Random(0), {(1, 2, 0)}) is None
    # Pareto selection draws only frontier members, by how many examples they lead.
    draws = {pool.pareto_choice(random.Random(s)) for s in range(20)}
    assert draws == {1, 2}


def test_gepa_under_app_optimize_survives_a_killed_driver(
    task: tuple[Any, LM], tmp_path: Path
) -> None:
    sim, lm = task
    sim.latency = 0.01
    optimizer = GEPA(metric, reflection_lm=lm, max_metric_calls=80, seed=4)
    before = sim.request_count
    with dsa.context(lm=lm):
        reference = optimizer.compile(student(), trainset=TRAIN, valset=VAL)
    calls = sim.request_count - before
    with start(lm=lm, data_dir=tmp_path / "data", lm_workers=4) as app:
        events: list[Any] = []
        app.subscribe("run.progress", events.append)
        before = sim.request_count
        run = start_run(app, optimizer, student(), trainset=TRAIN, valset=VAL, seed=4,
                        run_id="g1")  # fmt: skip
        wait_until(lambda: run.progress().steps_run >= 2)
        ref = run.driver()
        assert ref is not None
        supervisors.kill(ref)
        program = run.result(120)
        status = run.progress()
        app.events.flush(timeout=5.0)
    assert program.dump_state() == reference.dump_state()
    assert status.attempts == 2
    assert status.steps_restored >= 2
    assert status.best_score == 100.0
    # Nothing was redone: at most the uninterrupted run's calls (the run's LM journal also
    # answers a request the resumed run repeats, so it may make fewer).
    assert 0 < sim.request_count - before <= calls
    assert any("Pareto frontier" in e.message for e in events)


def test_an_outage_fails_the_run_clearly_instead_of_picking_a_winner(
    task: tuple[Any, LM],
) -> None:
    from dspy_actors.testing.sim_lm import Fault

    sim, lm = task
    sim.inject_rate(Fault.server_error(), rate=1.0)  # every LM call fails
    program = student()
    program.lm = lm
    optimizer = GEPA(metric, reflection_lm=lm, max_metric_calls=60)
    optimizer.max_errors = 3
    with pytest.raises(RuntimeError, match=r"examples failed \(more than max_errors=3\)"):
        optimizer.compile(program, trainset=TRAIN, valset=VAL)


def test_a_merge_is_scored_on_a_subsample_then_joins_the_pool(
    task: tuple[Any, LM], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The plan's merge branch, end to end: the pool proposes one merge (here a candidate
    carrying every rule), the plan scores it on the subsample, accepts it as at least as
    good as the better parent there, scores it on the validation set and keeps it."""
    from dspy_actors.optimizers import _gepa as gepa_module

    _sim, lm = task
    merged = {"self": " ".join([BASE_INSTRUCTION, *RULES.values()])}
    offered: list[tuple[int, int]] = []

    def one_merge(self: Any, rng: Any, tried: set[tuple[int, int, int]]) -> Any:
        if offered or len(self.candidates) < 2:
            return None
        offered.append((0, 1))
        return dict(merged), 0, 1, [0, 1, 2, 3, 4]

    monkeypatch.setattr(gepa_module._Pool, "merge_candidate", one_merge)
    program = student()
    program.lm = lm
    ckpt = MemoryCheckpointer()
    optimizer = GEPA(metric, reflection_lm=lm, max_metric_calls=40, seed=1)
    compiled = optimizer.compile(program, trainset=TRAIN, valset=VAL, checkpointer=ckpt)
    merges = [k for k in ckpt.steps if k.endswith("/merge")]
    assert offered
    assert len(merges) == 1
    assert ckpt.steps[merges[0]]["ids"] == [0, 1, 2, 3, 4]
    assert ckpt.steps[merges[0]]["scores"] == [1.0] * 5
    full = ckpt.steps[merges[0] + "/full_eval"]
    assert full["candidate"] == merged
    assert full["score"] == 100.0
    assert compiled.signature.instructions == merged["self"]
