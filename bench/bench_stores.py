"""Stores on PostgreSQL vs SQLite on this machine, and an upgrade's propagation to replicas.

    .venv/bin/python bench/bench_stores.py            # all three parts
    .venv/bin/python bench/bench_stores.py --quick    # fewer operations

1. Parameter store: ``save`` and ``load`` (latest) of a small optimized state, one thread,
   per operation (median and p99), SQLite file vs a PostgreSQL database (a throwaway
   cluster started here with initdb/pg_ctl, fsync off as in the tests; a production server
   with fsync on pays a disk flush per commit that SQLite's FULL synchronous pays too).
2. A cached LM call answered by the second tier (a fresh memory tier, as in a replica that
   did not make the call): ``Cache(disk_path=<SQLite file>)`` vs
   ``Cache(disk_path="postgresql://...")``; an uncached call to the loopback SimLM as the
   peer both are compared with.
3. Upgrade propagation: 3 replica processes serve one program against the database; this
   process upgrades it; each replica reports when it switched (it polls its handle's version
   every millisecond); time from the upgrade's start to each switch.

Results go to bench/results/bench_stores-<time>.json.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import configure_logging, machine_info, summarize_ms, write_results

import dspy_actors as dsa
from dspy_actors.lm import LM
from dspy_actors.lm.cache import Cache
from dspy_actors.runtime._parameter_store import ParameterStore
from dspy_actors.runtime.app import program_state
from dspy_actors.testing.postgres import PostgresCluster
from dspy_actors.testing.sim_lm import SimLM

REPO = Path(__file__).resolve().parents[1]
STATE: dict[str, Any] = {
    "self": {
        "demos": [{"question": f"q{i}", "answer": f"a{i}"} for i in range(4)],
        "signature": {"instructions": "Answer briefly.", "fields": ["question", "answer"]},
    }
}


def bench_parameter_store(where: Any, n: int) -> dict[str, Any]:
    with ParameterStore(where) as store:
        store.save("warm", STATE)
        saves = []
        for _ in range(n):
            t0 = time.perf_counter()
            store.save("bench", STATE)
            saves.append(time.perf_counter() - t0)
        loads = []
        for _ in range(n):
            t0 = time.perf_counter()
            store.load("bench")
            loads.append(time.perf_counter() - t0)
    return {"save": summarize_ms(saves), "load": summarize_ms(loads)}


def bench_cached_call(sim: SimLM, disk: str, n: int) -> dict[str, Any]:
    """n distinct calls made by one cache, then answered by a fresh one (second tier)."""
    prompts = [[{"role": "user", "content": f"question {i} for {disk[-12:]}"}] for i in range(n)]
    with Cache(memory_max_entries=10 * n, disk_path=disk) as filler:
        lm = LM("openai/sim-model", api_base=sim.openai_base, api_key="k", cache_store=filler)
        misses = []
        for messages in prompts:
            t0 = time.perf_counter()
            lm.complete(messages)
            misses.append(time.perf_counter() - t0)
        lm.close()
    with Cache(memory_max_entries=10 * n, disk_path=disk) as replica:
        lm = LM("openai/sim-model", api_base=sim.openai_base, api_key="k", cache_store=replica)
        hits = []
        for messages in prompts:
            t0 = time.perf_counter()
            response = lm.complete(messages)
            hits.append(time.perf_counter() - t0)
            assert response.cache_hit
        lm.close()
    return {"uncached_call": summarize_ms(misses), "second_tier_hit": summarize_ms(hits)}


_REPLICA = """
import sys, time, threading
import structlog
import dspy_actors as dsa
from dspy_actors.lm import LM
structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
base, url, data_dir, upgrades = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
lm = LM("openai/sim-model", api_base=base, api_key="k", cache=False)
with dsa.start(lm=lm, data_dir=data_dir, store=url, lm_max_in_flight=1) as app:
    qa = app.serve("qa", dsa.Predict("question -> answer"))
    while not app.stores.listening():
        time.sleep(0.001)
    print("ready", qa.version, flush=True)
    seen = qa.version
    deadline = time.monotonic() + 300
    while upgrades and time.monotonic() < deadline:
        if qa.version != seen:
            seen = qa.version
            upgrades -= 1
            print("switched", seen, repr(time.time()), flush=True)
        time.sleep(0.001)
"""


def bench_propagation(sim: SimLM, url: str, replicas: int, upgrades: int) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="bench-stores-"))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    lm = LM("openai/sim-model", api_base=sim.openai_base, api_key="k", cache=False)
    with dsa.start(lm=lm, data_dir=root / "leader", store=url) as app:
        qa = app.serve("qa", dsa.Predict("question -> answer"))
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    _REPLICA,
                    sim.openai_base,
                    url,
                    str(root / f"r{i}"),
                    str(upgrades),
                ],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            for i in range(replicas)
        ]
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline().startswith("ready")
        delays: list[float] = []
        for i in range(upgrades):
            state = program_state(dsa.Predict("question -> answer"))
            state["self"]["demos"] = [{"question": f"upgrade {i}", "answer": "x"}]
            t0 = time.time()
            qa.upgrade(state)
            for proc in procs:
                assert proc.stdout is not None
                _word, _version, at = proc.stdout.readline().split()
                delays.append(float(at) - t0)
        for proc in procs:
            proc.wait(timeout=60)
    lm.close()
    return {"replicas": replicas, "upgrades": upgrades, "switch_after": summarize_ms(delays)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    configure_logging(False)
    n = 100 if args.quick else 500
    results: dict[str, Any] = {"machine": machine_info(("psycopg", "psycopg-pool"))}
    tmp = Path(tempfile.mkdtemp(prefix="bench-stores-"))
    with PostgresCluster() as cluster, SimLM() as sim:
        results["parameter_store"] = {
            "sqlite": bench_parameter_store(tmp / "params.sqlite3", n),
            "postgres": bench_parameter_store(cluster.create_database(), n),
        }
        results["cached_call"] = {
            "sqlite": bench_cached_call(sim, str(tmp / "cache.sqlite3"), n),
            "postgres": bench_cached_call(sim, cluster.create_database(), n),
        }
        results["upgrade_propagation"] = bench_propagation(
            sim, cluster.create_database(), replicas=3, upgrades=3 if args.quick else 10
        )
    for part, data in results.items():
        if part != "machine":
            print(part, data)
    print("written to", write_results("bench_stores", results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
