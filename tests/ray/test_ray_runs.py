"""Evaluation and optimization runs fanned out over a real three-node Ray cluster
(conftest.py): results equal to one machine's, a worker node killed mid-run, the driver's
process killed and the run resumed in another, one LM rate limit across the cluster."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import dspy_actors as dsa
from dspy_actors.evaluate import Evaluate
from dspy_actors.evaluate._executor import Outcome, use_executor
from dspy_actors.lm import LM
from dspy_actors.optimizers import BootstrapFewShotWithRandomSearch
from dspy_actors.primitives.example import Example
from dspy_actors.runtime.app import start
from dspy_actors.testing import lm_on, wait_until
from dspy_actors.testing.sim_lm import SimLM
from tests.dspy_actors.optimizers.task import dataset, metric, responder
from tests.ray.conftest import NODE, REPO
from tests.reliability.custom_lms import ComputingLM

ray = pytest.importorskip("ray")

# One worker runs this whole module: its Ray cluster (module fixture) then starts once.
pytestmark = pytest.mark.xdist_group("ray-cluster")
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy  # noqa: E402

from dspy_actors.distributed import RayExecutor  # noqa: E402

TRAIN = dataset(0, 8)
DEV = dataset(12, 6)
SEED = 3
STEPS = 6  # candidates -3..2
# Bounds of waits on conditions (not margins): generous, for a loaded machine.
HOLD_BOUND_SECONDS = 900.0
REACH_BOUND_SECONDS = 300.0


def make_optimizer() -> BootstrapFewShotWithRandomSearch:
    optimizer = BootstrapFewShotWithRandomSearch(
        metric, max_bootstrapped_demos=2, max_labeled_demos=2, num_candidate_programs=3,
        num_threads=2,
    )  # fmt: skip
    optimizer.step_concurrency = 1  # one candidate per driver message
    return optimizer


def student() -> dsa.Predict:
    return dsa.Predict("question -> answer")


@pytest.fixture(scope="module")
def sim() -> Iterator[SimLM]:
    # Module-scoped, as the cluster: its workers keep connections to it open between tests
    # (one LM client per worker process), so its threads carry the suite's session prefix.
    with SimLM(responder, latency=0.01, thread_name_prefix="sim-lm-session-ray") as server:
        yield server


def make_lm(sim: SimLM) -> LM:
    return lm_on(sim, "openai/sim-task", api_key="k")


@pytest.fixture
def lm(sim: SimLM) -> Iterator[LM]:
    client = make_lm(sim)
    yield client
    client.close()


@pytest.fixture(scope="module")
def reference(sim: SimLM) -> dict[str, Any]:
    """The program an in-process compile reaches with this seed."""
    client = make_lm(sim)
    try:
        with dsa.context(lm=client):
            program = make_optimizer().compile(student(), trainset=TRAIN, valset=DEV, seed=SEED)
    finally:
        client.close()
    return program.dump_state()


@ray.remote(num_cpus=0)
class NodeLog:
    """Which nodes reached the metric; the doomed node's work is held there (``hold``, an
    async actor method nothing releases) until the node is killed, so the kill provably
    lands on work in flight, however long the machine takes to get there."""

    def __init__(self, doomed: str) -> None:
        self.doomed = doomed
        self.nodes: list[str] = []
        self.never = asyncio.Event()

    async def note(self, node: str) -> bool:
        self.nodes.append(node)
        return node == self.doomed

    async def seen(self) -> list[str]:
        return list(self.nodes)

    async def hold(self) -> None:
        await self.never.wait()


def logged_metric(example: Example, prediction: Any, trace: Any = None) -> bool:
    log = ray.get_actor("dsa-test-node-log", namespace="dspy-actors")
    if ray.get(log.note.remote(ray.get_runtime_context().get_node_id()), timeout=30):
        # On the doomed node: held until the node dies (or, if the test fails first, its
        # log actor is killed); the timeout only bounds a wait that should never end.
        ray.get(log.hold.remote(), timeout=HOLD_BOUND_SECONDS)
    return metric(example, prediction, trace)


def test_evaluate_on_the_cluster_gives_one_machines_result(cluster: Any, lm: LM) -> None:
    devset = dataset(0, 24)
    program = student()
    program.predictors()[0].demos = [TRAIN[0]]  # answers right: scores vary by example
    local = Evaluate(devset=devset, metric=metric, progress=False)
    with dsa.context(lm=lm):
        expected = local(program)
        executor = RayExecutor(chunk_size=3, threads_per_task=2)
        seen: list[tuple[int, int]] = []
        remote = Evaluate(devset=devset, metric=metric, progress=False, executor=executor)
        got = remote(program, on_progress=lambda done, total, _: seen.append((done, total)))
    assert got.score == expected.score == 100.0
    assert [r.score for r in got.results] == [r.score for r in expected.results]
    assert [r.prediction.answer for r in got.results] == [w.answer for w in devset]
    assert seen[-1] == (24, 24)
    # Eight chunks of three over three one-CPU nodes: more than one node did work.
    assert executor.stats.chunks == 8
    assert len(executor.stats.chunks_by_node) >= 2
    # A served handle cannot be shipped: a clear error, not a silent local run.
    with pytest.raises(TypeError, match="can only be evaluated here"):
        remote(lambda **kw: None)


def test_errors_come_back_per_example_and_max_errors_stops(cluster: Any, lm: LM) -> None:
    def failing(example: Example, prediction: Any, trace: Any = None) -> bool:
        if "river" in str(example.question):
            raise ValueError("bad metric on river")
        return True

    executor = RayExecutor(chunk_size=4, threads_per_task=2)
    with dsa.context(lm=lm):
        result = Evaluate(devset=dataset(0, 8), metric=failing, progress=False,
                          executor=executor)(student())  # fmt: skip
        assert result.errors == 1
        bad = [r for r in result.results if r.error is not None]
        assert len(bad) == 1
        assert isinstance(bad[0].error, ValueError)
        assert "river" in str(bad[0].example.question)
        with pytest.raises(dsa.EvaluationError, match="max_errors=0"):
            Evaluate(devset=dataset(0, 8), metric=failing, progress=False, max_errors=0,
                     executor=executor)(student())  # fmt: skip
    # Through the seam directly: outcomes in input order, errors carried, not raised.
    with use_executor(executor):
        outs = executor.map_outcomes(lambda x: 10 // x, [5, 0, 2])
    assert [o.value for o in outs] == [2, None, 5]
    assert isinstance(outs[1].error, ZeroDivisionError)
    assert outs[0] == Outcome(value=2)


def test_run_on_cluster_survives_a_worker_node_killed_mid_run(
    cluster: Any, lm: LM, sim: SimLM, tmp_path: Path, reference: dict[str, Any]
) -> None:
    victim = cluster.add_node(**NODE)  # killed below: the others stay for later tests
    cluster.wait_for_nodes(timeout=60)
    # On the driver's (head) node: it must outlive the victim.
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    log = NodeLog.options(  # type: ignore[attr-defined]
        name="dsa-test-node-log", scheduling_strategy=here
    ).remote(victim.node_id)
    optimizer = make_optimizer()
    optimizer.metric = logged_metric
    executor = RayExecutor(chunk_size=2, threads_per_task=1)
    try:
        with start(lm=lm, data_dir=tmp_path / "data", lm_max_in_flight=4) as app:
            run = app.optimize(optimizer, student(), trainset=TRAIN, valset=DEV, seed=SEED,
                               run_id="w1", executor=executor)  # fmt: skip
            wait_until(
                lambda: victim.node_id in ray.get(log.seen.remote(), timeout=30),
                timeout=REACH_BOUND_SECONDS,
                what="the doomed node to reach the metric",
            )
            cluster.remove_node(victim, allow_graceful=False)  # its raylet and workers die
            program = run.result(120)
        assert program.dump_state() == reference
        assert run.progress().steps_run == STEPS
        # The victim's chunks never finished there: they were run again on other nodes.
        assert victim.node_id not in executor.stats.chunks_by_node
        assert len(executor.stats.chunks_by_node) >= 2
    finally:
        ray.kill(log)


_CHILD = """
import sys
import dspy_actors as dsa
from dspy_actors.distributed import RayExecutor
from dspy_actors.lm import LM
from tests.ray.test_ray_runs import DEV, SEED, TRAIN, make_optimizer, student

url, data_dir, address = sys.argv[1], sys.argv[2], sys.argv[3]
lm = LM("openai/sim-task", api_base=url, api_key="k", cache=False)
app = dsa.start(lm=lm, data_dir=data_dir, lm_max_in_flight=4, ray_address=address)
run = app.optimize(make_optimizer(), student(), trainset=TRAIN, valset=DEV, seed=SEED,
                   run_id="d1")
run.result(120)
"""


def _saved_steps(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1.0) as conn:
            (count,) = conn.execute("SELECT COUNT(*) FROM run_steps WHERE run_id = 'd1'").fetchone()
            return int(count)
    except sqlite3.Error:
        return 0


def test_driver_killed_then_the_run_resumes_from_its_checkpoint_elsewhere(
    cluster: Any, lm: LM, sim: SimLM, tmp_path: Path, reference: dict[str, Any]
) -> None:
    data_dir = tmp_path / "shared"  # the store both drivers reach
    db = data_dir / "runs.sqlite3"
    sim.latency = 0.04
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, sim.openai_base, str(data_dir), cluster.address],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        wait_until(
            lambda: _saved_steps(db) >= 2 or child.poll() is not None,
            timeout=90.0,
            what="two checkpointed steps (or the driver to exit)",
        )
        child.kill()  # SIGKILL: the first driver's machine is gone
    finally:
        _, err = child.communicate(timeout=30)
        sim.latency = 0.01
    assert child.returncode == -9, err.decode()[-2000:]
    saved = _saved_steps(db)
    assert 2 <= saved < STEPS

    with start(lm=lm, data_dir=data_dir, lm_max_in_flight=4, ray_address=cluster.address) as app:
        run = app.optimize(make_optimizer(), student(), trainset=TRAIN, valset=DEV, seed=SEED,
                           run_id="d1")  # fmt: skip
        program = run.result(120)
        status = run.progress()
    assert program.dump_state() == reference
    assert status.steps_restored == saved
    assert status.steps_run == STEPS - saved


def test_one_rate_limit_holds_across_the_cluster(cluster: Any, lm: LM, sim: SimLM) -> None:
    rate = 20.0
    executor = RayExecutor(chunk_size=4, threads_per_task=4,
                           rate_limit={"requests_per_second": rate, "burst": 1},
                           rate_limit_name="test-shared")  # fmt: skip
    devset = dataset(0, 24)
    before = sim.request_count
    started = time.monotonic()
    with dsa.context(lm=lm):
        result = Evaluate(devset=devset, metric=metric, progress=False,
                          executor=executor)(student())  # fmt: skip
    elapsed = time.monotonic() - started
    sent = sim.request_count - before
    assert result.errors == 0
    assert sent == len(devset)
    # Every request waited for its reservation from one bucket: 24 requests at 20/s with a
    # burst of 1 cannot all be sent in under 23/20 s, however many nodes sent them.
    assert elapsed >= (sent - 1) / rate
    assert len(executor.stats.chunks_by_node) >= 2
    with pytest.raises(ValueError, match="requests_per_second"):
        RayExecutor(rate_limit={"requests_per_second": 0})


_STOP_CHILD = """
import sys
import ray
import dspy_actors as dsa
from dspy_actors.distributed._cluster import app_cluster_executor
from dspy_actors.lm import LM

url, address = sys.argv[1], sys.argv[2]
lm = LM("openai/sim-task", api_base=url, api_key="k", cache=False)
app = dsa.start(lm=lm, lm_max_in_flight=2, ray_address=address)
executor = app_cluster_executor(app, app.config)  # what every run of the app uses
with dsa.context(lm=lm):
    outcomes = executor.map_outcomes(abs, [-1, -2, 3])
print("values", [o.value for o in outcomes], "connected", ray.is_initialized())
app.stop()
print("after stop connected", ray.is_initialized())
"""


def test_app_stop_disconnects_the_ray_driver_its_runs_connected(cluster: Any, sim: SimLM) -> None:
    """An app started with ``ray_address`` connects its process to the cluster on its
    first run; ``app.stop()`` ends that connection (the cluster stays up)."""
    child = subprocess.run(
        [sys.executable, "-c", _STOP_CHILD, sim.openai_base, cluster.address],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
        text=True, timeout=300, check=False,
    )  # fmt: skip
    assert child.returncode == 0, child.stderr[-3000:]
    assert "values [1, 2, 3] connected True" in child.stdout
    assert "after stop connected False" in child.stdout


def upper_matches(example: Example, prediction: Any, trace: Any = None) -> bool:
    return bool(example.answer == prediction.answer)


def test_a_custom_lm_is_rebuilt_on_every_node(cluster: Any) -> None:
    """A ``dsa.BaseLM`` subclass crosses to the workers by its ``dump_state`` (its class
    by import path), and its ``forward`` answers there."""
    devset = [
        Example(question=f"word{i}", answer=f"WORD{i}").with_inputs("question") for i in range(8)
    ]
    executor = RayExecutor(chunk_size=2, threads_per_task=2)
    with dsa.context(lm=ComputingLM(temperature=0.0)):
        result = Evaluate(devset=devset, metric=upper_matches, progress=False,
                          executor=executor)(student())  # fmt: skip
    assert result.score == 100.0
    assert executor.stats.chunks == 4
    assert len(executor.stats.chunks_by_node) >= 2
