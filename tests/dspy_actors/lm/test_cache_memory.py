"""The cache key and the memory tier of ``Cache`` (no disk involved)."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import platformdirs
import pytest

from dspy_actors.lm import cache as cache_module
from dspy_actors.lm.cache import Cache, cache_key, default_cache, default_disk_path


def _request(**changes: Any) -> dict[str, Any]:
    request: dict[str, Any] = {
        "provider": "openai",
        "api_base": "http://127.0.0.1:8000/v1",
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "Be terse."},
            {"role": "user", "content": [{"type": "text", "text": "What is 2 + 2?"}]},
        ],
        "response_format": None,
        "temperature": 0.0,
        "max_tokens": 1000,
    }
    request.update(changes)
    return request


@pytest.fixture
def memory_cache() -> Iterator[Cache]:
    with Cache(memory_max_entries=3, disk_path=None) as cache:
        yield cache


# ---------------------------------------------------------------------------- cache_key


def test_cache_key_is_a_sha256_hex_digest() -> None:
    key = cache_key(_request())
    assert len(key) == 64
    assert int(key, 16) >= 0
    assert key == cache_key(_request())


def test_cache_key_ignores_dict_key_order_at_every_depth() -> None:
    request = _request()
    reordered = dict(reversed(list(request.items())))
    reordered["messages"] = [dict(reversed(list(m.items()))) for m in request["messages"]]
    assert list(reordered) != list(request)
    assert cache_key(reordered) == cache_key(request)


def test_cache_key_differs_when_only_the_endpoint_differs() -> None:
    a = cache_key(_request(api_base="http://127.0.0.1:8000/v1"))
    b = cache_key(_request(api_base="http://127.0.0.1:8001/v1"))
    assert a != b


@pytest.mark.parametrize(
    "change",
    [
        {"provider": "anthropic"},
        {"model": "gpt-4o"},
        {"temperature": 0.7},
        {"max_tokens": 999},
        {"n": 2},
        {"stop": ["\n"]},
        {"response_format": {"type": "json_object"}},
        {"messages": [{"role": "user", "content": "What is 2 + 3?"}]},
    ],
)
def test_cache_key_covers_every_part_of_the_request(change: dict[str, Any]) -> None:
    assert cache_key(_request(**change)) != cache_key(_request())


def test_cache_key_treats_json_equal_values_alike() -> None:
    # JSON (and every provider) reads 1 and 1.0, a tuple and a list, the same way.
    assert cache_key(_request(temperature=1)) == cache_key(_request(temperature=1.0))
    assert cache_key(_request(stop=("a", "b"))) == cache_key(_request(stop=["a", "b"]))
    assert cache_key(_request(temperature=0.5)) != cache_key(_request(temperature=0.25))
    # bool is not an int here: True must not collide with 1.
    assert cache_key(_request(flag=True)) != cache_key(_request(flag=1))


def test_cache_key_rejects_what_json_cannot_say() -> None:
    with pytest.raises(TypeError, match="keys must be str"):
        cache_key({1: "a"})  # type: ignore[dict-item]
    with pytest.raises(TypeError):
        cache_key(_request(temperature=object()))
    with pytest.raises(ValueError, match="not JSON compliant"):
        cache_key(_request(temperature=math.nan))


# ------------------------------------------------------------------------- memory tier


def test_memory_only_cache_round_trips_and_reports_its_mode(memory_cache: Cache) -> None:
    assert memory_cache.get("k") is None
    memory_cache.put("k", {"outputs": ["4"], "usage": {"prompt_tokens": 3}})
    assert memory_cache.get("k") == {"outputs": ["4"], "usage": {"prompt_tokens": 3}}
    health = memory_cache.health()
    assert health.status == "memory_only"
    assert health.disk_path is None
    stats = memory_cache.stats
    assert (stats.memory_hits, stats.disk_hits, stats.misses, stats.errors) == (1, 0, 1, 0)
    assert stats.hits == 1


def test_memory_hit_returns_the_stored_object_without_decoding(memory_cache: Cache) -> None:
    memory_cache.put("k", {"outputs": ["a"]})
    first = memory_cache.get("k")
    assert first is not None
    assert memory_cache.get("k") is first  # no copy, no JSON decode on the hot path


def test_put_keeps_its_own_copy_in_the_shape_a_disk_hit_has(memory_cache: Cache) -> None:
    value: dict[str, Any] = {"outputs": ["a"], "pair": (1, 2)}
    memory_cache.put("k", value)
    value["outputs"].append("changed later by the caller")
    assert memory_cache.get("k") == {"outputs": ["a"], "pair": [1, 2]}


def test_put_rejects_values_that_are_not_json_dicts(memory_cache: Cache) -> None:
    with pytest.raises(TypeError, match="must be a dict"):
        memory_cache.put("k", ["not", "a", "dict"])  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        memory_cache.put("k", {"x": object()})
    with pytest.raises(ValueError, match="not JSON compliant"):
        memory_cache.put("k", {"x": math.inf})
    assert memory_cache.get("k") is None


def test_memory_lru_evicts_the_least_recently_used_entry(memory_cache: Cache) -> None:
    for name in "abc":
        memory_cache.put(name, {"v": name})
    assert memory_cache.get("a") == {"v": "a"}  # a is now the most recently used
    memory_cache.put("d", {"v": "d"})  # over 3 entries: b goes
    assert memory_cache.get("b") is None
    assert [memory_cache.get(n) for n in "acd"] == [{"v": "a"}, {"v": "c"}, {"v": "d"}]
    stats = memory_cache.stats
    assert stats.memory_evictions == 1
    assert stats.evictions == 1
    assert stats.memory_entries == 3


def test_overwriting_a_key_does_not_evict(memory_cache: Cache) -> None:
    for round_ in range(5):
        for name in "abc":
            memory_cache.put(name, {"v": round_})
    assert memory_cache.stats.memory_evictions == 0
    assert memory_cache.get("a") == {"v": 4}


def test_zero_entries_disables_the_memory_tier() -> None:
    with Cache(memory_max_entries=0, disk_path=None) as cache:
        cache.put("k", {"v": 1})
        assert cache.get("k") is None
        assert cache.stats.memory_entries == 0
    with pytest.raises(ValueError, match="memory_max_entries"):
        Cache(memory_max_entries=-1, disk_path=None)


def test_clear_empties_memory(memory_cache: Cache) -> None:
    memory_cache.put("k", {"v": 1})
    memory_cache.clear()
    assert memory_cache.get("k") is None


def test_a_closed_cache_misses_and_ignores_puts() -> None:
    cache = Cache(disk_path=None)
    cache.put("k", {"v": 1})
    cache.close()
    cache.close()  # idempotent
    assert cache.get("k") is None
    cache.put("k2", {"v": 2})
    assert cache.get("k2") is None
    assert cache.health().status == "closed"


def test_sixteen_threads_share_a_memory_cache_correctly() -> None:
    keys = [f"key-{i}" for i in range(100)]
    expected = {key: {"key": key, "square": i * i} for i, key in enumerate(keys)}
    wrong: list[tuple[str, Any]] = []
    wrong_lock = threading.Lock()

    def hammer(worker: int) -> int:
        hits = 0
        for step in range(2000):
            key = keys[(worker * 7919 + step * 31) % len(keys)]
            got = cache.get(key)
            if got is None:
                cache.put(key, expected[key])
            elif got != expected[key]:
                with wrong_lock:
                    wrong.append((key, got))
            else:
                hits += 1
        return hits

    with Cache(memory_max_entries=64, disk_path=None) as cache:
        with ThreadPoolExecutor(max_workers=16) as pool:
            hits = sum(pool.map(hammer, range(16), timeout=30))
        stats = cache.stats
    assert wrong == []
    assert hits == stats.memory_hits > 0
    assert stats.memory_hits + stats.misses == 16 * 2000
    assert stats.memory_entries == 64
    assert stats.memory_evictions > 0


# ---------------------------------------------------------------------- default cache


def test_default_disk_path_follows_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(cache_module.CACHE_DIR_ENV, raising=False)
    expected = Path(platformdirs.user_cache_dir("dspy_actors", appauthor=False))
    assert default_disk_path() == expected / "lm_cache.sqlite3"
    monkeypatch.setenv(cache_module.CACHE_DIR_ENV, str(tmp_path))
    assert default_disk_path() == tmp_path / "lm_cache.sqlite3"


def test_default_cache_is_one_lazy_process_wide_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(cache_module.CACHE_DIR_ENV, str(tmp_path))
    monkeypatch.setattr(cache_module, "_default", None)
    cache = default_cache()
    try:
        assert default_cache() is cache
        assert cache.disk_path == tmp_path / "lm_cache.sqlite3"
        assert cache.health().status == "ok"
        assert cache.disk_path.exists()
    finally:
        cache.close()
