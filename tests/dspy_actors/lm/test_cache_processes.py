"""Several real processes (``python -c`` subprocesses) sharing one SQLite cache file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dspy_actors.lm.cache import Cache, cache_key

# The child builds its requests with keys in the order it is given and reports as JSON.
CHILD = r"""
import json, sys, time
from dspy_actors.lm.cache import Cache, cache_key

job = json.loads(sys.argv[1])
out = {"keys": [], "found": {}}
with Cache(disk_path=job["path"], memory_max_entries=job.get("memory", 10_000)) as cache:
    for pairs in job.get("put", []):
        request = dict(pairs)
        key = cache_key(request)
        cache.put(key, {"outputs": [request["answer"]], "by": job["name"]})
        out["keys"].append(key)
    want = {cache_key(dict(r)): r for r in job.get("get", [])}
    deadline = time.monotonic() + job.get("wait_s", 0.0)
    while True:
        for key in list(want):
            value = cache.get(key)
            if value is not None:
                out["found"][key] = value
                del want[key]
        if not want or time.monotonic() >= deadline:
            break
        time.sleep(0.01)
    stats = cache.stats
    out["stats"] = {"disk_hits": stats.disk_hits, "errors": stats.errors}
    out["health"] = cache.health().status
print(json.dumps(out))
"""


def _request(i: int, *, reverse: bool = False) -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = [
        ("provider", "openai"),
        ("api_base", "http://127.0.0.1:9/v1"),
        ("model", "gpt-4o-mini"),
        ("messages", [{"role": "user", "content": f"question {i}"}]),
        ("temperature", 0.0),
        ("answer", f"answer {i}"),
    ]
    return items[::-1] if reverse else items


def _env(hash_seed: str) -> dict[str, str]:
    # Different hash seeds: nothing in the key may depend on per-process hashing.
    return {**os.environ, "PYTHONHASHSEED": hash_seed}


def _start(job: dict[str, Any], hash_seed: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, json.dumps(job)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(hash_seed),
    )


def _finish(proc: subprocess.Popen[str], timeout: float = 60.0) -> dict[str, Any]:
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate(timeout=10)
        pytest.fail("cache child process timed out")
    assert proc.returncode == 0, stderr
    result: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    return result


def test_a_value_put_by_one_process_is_a_hit_in_another(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.sqlite3")
    writer = _finish(_start({"name": "A", "path": path, "put": [_request(1)]}, "1"))
    # The reader spells the same request with its keys in the opposite order.
    reader = _finish(_start({"name": "B", "path": path, "get": [_request(1, reverse=True)]}, "2"))
    key = cache_key(dict(_request(1)))
    assert writer["keys"] == [key]  # same key in the parent and both children
    assert reader["found"] == {key: {"outputs": ["answer 1"], "by": "A"}}
    assert reader["stats"] == {"disk_hits": 1, "errors": 0}
    assert reader["health"] == "ok"


def test_two_processes_write_and_read_one_file_at_the_same_time(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.sqlite3")
    n = 150
    mine = [_request(i) for i in range(n)]
    theirs = [_request(i) for i in range(n, 2 * n)]
    common = {"path": path, "memory": 10, "wait_s": 30.0}
    a = _start({**common, "name": "A", "put": mine, "get": theirs}, "3")
    b = _start({**common, "name": "B", "put": theirs, "get": mine}, "4")
    result_a, result_b = _finish(a), _finish(b)

    assert len(result_a["found"]) == n
    assert len(result_b["found"]) == n
    assert {v["by"] for v in result_a["found"].values()} == {"B"}
    assert {v["by"] for v in result_b["found"].values()} == {"A"}
    for result in (result_a, result_b):
        assert result["stats"]["errors"] == 0
        assert result["stats"]["disk_hits"] == n
        assert result["health"] == "ok"

    # And this process sees everything both wrote.
    with Cache(disk_path=path, memory_max_entries=0) as cache:
        for i, request in enumerate(mine + theirs):
            assert cache.get(cache_key(dict(request))) == {
                "outputs": [f"answer {i}"],
                "by": "A" if i < n else "B",
            }
