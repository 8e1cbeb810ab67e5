"""The LM's sharded client pool: threads share a bounded set of clients; close() closes all."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from dspy_actors.lm import LM
from dspy_actors.lm.transport import ClientPool
from dspy_actors.testing import SimLM


def _server_connections(sim: SimLM) -> int:
    prefix = f"sim-lm-{sim.port}-conn-"
    return sum(t.name.startswith(prefix) for t in threading.enumerate())


def _wait_for(predicate: object, timeout: float = 5.0) -> bool:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return bool(predicate())


def test_threads_spread_over_shards_and_close_drops_every_connection(sim_lm: SimLM) -> None:
    sim_lm.latency = 0.05  # keep calls overlapping so threads hold distinct connections
    lm = LM("openai/sim", api_base=sim_lm.openai_base, api_key="k", cache=False)
    try:
        with ThreadPoolExecutor(8, thread_name_prefix="shard-test") as pool:
            outputs = list(pool.map(lambda i: lm(f"q{i}"), range(32)))
        assert len(outputs) == 32
        assert lm._clients.open_clients == 8  # one shard per thread, up to the shard count
        assert _server_connections(sim_lm) >= 8
    finally:
        lm.close()
    assert lm._clients.open_clients == 0
    assert _wait_for(lambda: _server_connections(sim_lm) == 0), "connections left open"


def test_lm_reconnects_after_close(sim_lm: SimLM) -> None:
    with LM("openai/sim", api_base=sim_lm.openai_base, api_key="k", cache=False) as lm:
        lm("before")
        lm.close()
        assert lm("after") == ["This is a simulated answer."]
    assert sim_lm.request_count == 2


def test_shard_count_bounds_the_clients(sim_lm: SimLM) -> None:
    pool = ClientPool(headers={}, timeout=5.0, shards=2)
    seen: set[int] = set()
    lock = threading.Lock()

    def grab() -> None:
        client = pool.client()
        assert pool.client() is client, "a thread keeps its client"
        with lock:
            seen.add(id(client))

    threads = [threading.Thread(target=grab) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    try:
        assert len(seen) == 2
        assert pool.open_clients == 2
    finally:
        pool.close()


def test_shards_must_be_positive() -> None:
    with pytest.raises(ValueError, match="shards must be >= 1"):
        ClientPool(headers={}, timeout=1.0, shards=0)
