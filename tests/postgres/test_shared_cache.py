"""The LM cache's shared tier in PostgreSQL: a call answered by one process is a cache hit
for another (no second request), and a database that is down only makes calls miss."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from dspy_actors.lm import LM
from dspy_actors.lm.cache import Cache
from dspy_actors.testing.postgres import PostgresCluster
from dspy_actors.testing.sim_lm import SimLM

REPO = Path(__file__).resolve().parents[2]

_OTHER_REPLICA = """
import sys
from dspy_actors.lm import LM
from dspy_actors.lm.cache import Cache

base, url = sys.argv[1], sys.argv[2]
with Cache(memory_max_entries=100, disk_path=url) as cache:
    lm = LM("openai/sim-model", api_base=base, api_key="k", cache_store=cache)
    print(lm.complete([{"role": "user", "content": "shared question"}]).outputs[0])
    lm.close()
"""


def test_a_call_paid_by_one_process_is_a_hit_in_another(sim_lm: SimLM, postgres_url: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", _OTHER_REPLICA, sim_lm.openai_base, postgres_url],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert sim_lm.request_count == 1
    with Cache(memory_max_entries=100, disk_path=postgres_url) as cache:
        lm = LM("openai/sim-model", api_base=sim_lm.openai_base, api_key="k", cache_store=cache)
        try:
            response = lm.complete([{"role": "user", "content": "shared question"}])
            assert response.cache_hit
            assert response.outputs[0] == done.stdout.strip()
            assert sim_lm.request_count == 1  # not paid twice
            assert cache.stats.disk_hits == 1
            lm.complete([{"role": "user", "content": "shared question"}])
            assert cache.stats.memory_hits == 1  # the memory tier stays in front
            assert cache.health().status == "ok"
            assert cache.disk_path == postgres_url  # (it has no password to hide)
        finally:
            lm.close()


def test_a_database_that_is_down_makes_calls_miss_not_fail(sim_lm: SimLM) -> None:
    cluster = PostgresCluster()  # never started: nothing listens on its port
    try:
        with Cache(memory_max_entries=100, disk_path=cluster.url) as cache:
            lm = LM("openai/sim-model", api_base=sim_lm.openai_base, api_key="k",
                    cache_store=cache)  # fmt: skip
            try:
                first = lm.complete([{"role": "user", "content": "q"}])
                assert not first.cache_hit
                assert sim_lm.request_count == 1
                assert cache.stats.errors >= 1
                assert cache.health().last_error is not None
                # The memory tier still answers.
                assert lm.complete([{"role": "user", "content": "q"}]).cache_hit
            finally:
                lm.close()
    finally:
        cluster.stop()
