"""The SQLite tier of ``Cache``: persistence, byte-bounded LRU eviction, many threads on one
file, and files that are deleted, replaced, corrupted or unusable while in use."""

from __future__ import annotations

import os
import shutil
import sqlite3
import threading
from collections.abc import Callable, Iterator, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from dspy_actors.lm import _cache_sqlite
from dspy_actors.lm.cache import Cache, cache_key

Opener = Callable[..., Cache]


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "cache" / "lm_cache.sqlite3"


@pytest.fixture
def open_cache(db_path: Path) -> Iterator[Opener]:
    """Open caches on ``db_path`` (by default); every one is closed after the test."""
    opened: list[Cache] = []

    def open_(**kwargs: Any) -> Cache:
        kwargs.setdefault("disk_path", db_path)
        cache = Cache(**kwargs)
        opened.append(cache)
        return cache

    yield open_
    for cache in opened:
        cache.close()


def _rows(path: Path) -> dict[str, tuple[str, int]]:
    with closing(sqlite3.connect(path)) as conn:
        return {k: (v, s) for k, v, s in conn.execute("SELECT key, value, size FROM entries")}


def _meta_total(path: Path) -> int:
    with closing(sqlite3.connect(path)) as conn:
        row = conn.execute("SELECT value FROM meta WHERE name = 'total_bytes'").fetchone()
        return int(row[0])


def _garble(path: Path) -> None:
    """Overwrite the whole file with garbage bytes, in place (same inode)."""
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.write(os.urandom(size))


def _disk_errors(logs: list[MutableMapping[str, Any]]) -> list[MutableMapping[str, Any]]:
    return [e for e in logs if e["event"] == "lm_cache.disk_error"]


# ------------------------------------------------------------------------- basics


def test_values_persist_in_the_file_across_caches(open_cache: Opener, db_path: Path) -> None:
    key = cache_key({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    first = open_cache()
    first.put(key, {"outputs": ["hello"], "usage": {"prompt_tokens": 1}})
    assert first.health().status == "ok"
    assert db_path.exists()

    second = open_cache()
    assert second.get(key) == {"outputs": ["hello"], "usage": {"prompt_tokens": 1}}
    assert second.get(key) == {"outputs": ["hello"], "usage": {"prompt_tokens": 1}}
    stats = second.stats
    assert (stats.disk_hits, stats.memory_hits, stats.misses, stats.errors) == (1, 1, 0, 0)
    assert second.get("absent") is None
    assert second.stats.misses == 1


def test_file_holds_json_text_never_pickle(open_cache: Opener, db_path: Path) -> None:
    open_cache().put("k", {"outputs": ["ünïcode"], "n": 1})
    value, _size = _rows(db_path)["k"]
    assert value == '{"outputs":["ünïcode"],"n":1}'


def test_file_is_in_wal_mode(open_cache: Opener, db_path: Path) -> None:
    open_cache().put("k", {"v": 1})
    with closing(sqlite3.connect(db_path)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_clear_empties_the_file_for_everyone(open_cache: Opener, db_path: Path) -> None:
    a, b = open_cache(), open_cache()
    a.put("k", {"v": 1})
    b.clear()
    assert _rows(db_path) == {}
    assert _meta_total(db_path) == 0
    # a still has k in memory (its own tier), but a fresh cache does not find it.
    assert open_cache().get("k") is None


def test_byte_total_tracks_inserts_overwrites_and_deletes(
    open_cache: Opener, db_path: Path
) -> None:
    cache = open_cache()
    cache.put("a", {"v": "x" * 100})
    cache.put("b", {"v": "y"})
    cache.put("a", {"v": "short"})  # an overwrite changes the size
    rows = _rows(db_path)
    assert _meta_total(db_path) == sum(size for _, size in rows.values())
    assert rows["a"][1] == len("a") + len('{"v":"short"}') + _cache_sqlite.ROW_OVERHEAD_BYTES


# ----------------------------------------------------------------------- eviction


def _value_of_size(key: str, size: int) -> dict[str, Any]:
    """A value whose row costs exactly ``size`` bytes in the byte budget."""
    fixed = len(key) + len('{"t":""}') + _cache_sqlite.ROW_OVERHEAD_BYTES
    return {"t": "x" * (size - fixed)}


def test_disk_evicts_least_recently_used_rows_in_a_batch(open_cache: Opener, db_path: Path) -> None:
    row = 1000
    writer = open_cache(memory_max_entries=0, disk_max_bytes=10 * row)
    reader = open_cache(memory_max_entries=0)
    keys = [f"k{i:02d}" for i in range(10)]
    for key in keys:
        writer.put(key, _value_of_size(key, row))
    assert _meta_total(db_path) == 10 * row  # exactly at the budget: nothing evicted yet
    assert writer.stats.disk_evictions == 0

    # Disk hits make k00 and k01 recently used. Reads never write: each cache applies its
    # touches with its next put (writer) or when it closes (reader).
    assert reader.get("k00") is not None
    reader.close()
    assert writer.get("k01") is not None
    writer.put("new", _value_of_size("new", row))

    remaining = set(_rows(db_path))
    # Over budget by one row: evicted down to 90% in one batch, the two oldest untouched rows.
    assert remaining == (set(keys) - {"k02", "k03"}) | {"new"}
    assert _meta_total(db_path) <= 0.9 * 10 * row
    assert writer.stats.disk_evictions == 2
    assert writer.stats.evictions == 2


def test_disk_total_stays_within_budget_under_many_puts(open_cache: Opener, db_path: Path) -> None:
    budget = 20_000
    cache = open_cache(memory_max_entries=8, disk_max_bytes=budget)
    for i in range(300):
        key = f"key-{i}"
        cache.put(key, _value_of_size(key, 300 + (i % 7) * 50))
        assert _meta_total(db_path) <= budget
    rows = _rows(db_path)
    assert _meta_total(db_path) == sum(size for _, size in rows.values())
    assert "key-299" in rows
    assert "key-0" not in rows
    stats = cache.stats
    assert stats.disk_evictions == 300 - len(rows)
    assert stats.memory_evictions == 300 - 8
    # Batches: far fewer eviction rounds than evicted rows would mean is hard to observe
    # directly; the total after any eviction is at most the low-water mark instead.
    assert stats.errors == 0


def test_value_larger_than_the_disk_budget_stays_in_memory(
    open_cache: Opener, db_path: Path
) -> None:
    cache = open_cache(disk_max_bytes=1000)
    cache.put("big", {"t": "x" * 2000})
    assert cache.get("big") == {"t": "x" * 2000}
    assert "big" not in _rows(db_path)
    assert cache.stats.errors == 0


# -------------------------------------------------------------------- concurrency


def test_sixteen_threads_hammer_one_file(open_cache: Opener, db_path: Path) -> None:
    # Two caches on the same file, small memory tiers so most operations reach SQLite.
    caches = [open_cache(memory_max_entries=16), open_cache(memory_max_entries=16)]
    keys = [cache_key({"i": i}) for i in range(200)]
    expected = {key: {"outputs": [f"answer {i}"], "i": i} for i, key in enumerate(keys)}
    wrong: list[tuple[str, Any]] = []
    lock = threading.Lock()

    def hammer(worker: int) -> None:
        cache = caches[worker % 2]
        for step in range(150):
            key = keys[(worker * 37 + step * 13) % len(keys)]
            got = cache.get(key)
            if got is None:
                cache.put(key, expected[key])
            elif got != expected[key]:
                with lock:
                    wrong.append((key, got))

    with ThreadPoolExecutor(max_workers=16) as pool:
        for future in [pool.submit(hammer, w) for w in range(16)]:
            future.result(timeout=60)

    assert wrong == []
    for cache in caches:
        stats = cache.stats
        assert stats.errors == 0, cache.health()
        assert stats.disk_hits > 0
        assert cache.health().status == "ok"
    touched = {keys[(w * 37 + s * 13) % len(keys)] for w in range(16) for s in range(150)}
    rows = _rows(db_path)
    assert set(rows) == touched
    fresh = open_cache(memory_max_entries=0)
    assert all(fresh.get(key) == expected[key] for key in touched)


def test_a_writer_holding_the_lock_too_long_skips_the_put(
    open_cache: Opener, db_path: Path
) -> None:
    cache = open_cache(memory_max_entries=0, busy_timeout=0.05)
    cache.put("before", {"v": 1})
    with closing(sqlite3.connect(db_path, isolation_level=None)) as other:
        other.execute("BEGIN IMMEDIATE")  # another writer holds the write lock
        with capture_logs() as logs:
            cache.put("during", {"v": 2})  # waits 50 ms, then gives up: no exception
        assert cache.get("before") == {"v": 1}  # readers are not blocked (WAL)
        other.execute("ROLLBACK")
    assert [e["action"] for e in logs if e["event"] == "lm_cache.disk_busy"] == ["skipped"]
    health = cache.health()
    assert (health.status, health.rebuilds, cache.stats.errors) == ("ok", 0, 1)
    assert "locked" in (health.last_error or "")
    cache.put("after", {"v": 3})
    assert set(_rows(db_path)) == {"before", "after"}


# ------------------------------------------------------------------- file damage


def test_garbage_written_over_the_file_in_use_is_rebuilt(open_cache: Opener, db_path: Path) -> None:
    cache = open_cache(memory_max_entries=0)
    for i in range(20):
        cache.put(f"k{i}", {"v": i})
    _garble(db_path)
    with capture_logs() as logs:
        assert cache.get("k1") is None  # never raises; the old contents are gone
    [event] = _disk_errors(logs)
    assert event["log_level"] == "warning"
    assert event["action"] == "rebuilt"
    assert event["op"] == "get"
    assert event["path"] == str(db_path)
    assert "corrupt" in event["error"]
    health = cache.health()
    assert (health.status, health.rebuilds) == ("ok", 1)
    assert cache.stats.errors == 1

    cache.put("k1", {"v": "again"})
    assert cache.get("k1") == {"v": "again"}
    assert _rows(db_path) == {"k1": ('{"v":"again"}', _rows(db_path)["k1"][1])}
    assert open_cache().get("k1") == {"v": "again"}


def test_a_garbage_file_found_at_open_is_rebuilt(open_cache: Opener, db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    db_path.write_bytes(os.urandom(8192))
    with capture_logs() as logs:
        cache = open_cache()
    assert [e["action"] for e in _disk_errors(logs)] == ["rebuilt"]
    assert cache.health().status == "ok"
    assert cache.health().rebuilds == 1
    cache.put("k", {"v": 1})
    assert open_cache().get("k") == {"v": 1}


def test_a_file_deleted_while_in_use_is_rebuilt_and_the_put_lands(
    open_cache: Opener, db_path: Path
) -> None:
    cache = open_cache(memory_max_entries=0)
    cache.put("old", {"v": 0})
    os.remove(db_path)  # the WAL and shared-memory files are left behind, as after `rm`
    with capture_logs() as logs:
        cache.put("new", {"v": 1})
    assert [(e["op"], e["action"]) for e in _disk_errors(logs)] == [("put", "rebuilt")]
    assert "deleted" in _disk_errors(logs)[0]["error"]
    assert db_path.exists()
    assert set(_rows(db_path)) == {"new"}  # nothing of the deleted file came back
    assert cache.get("new") == {"v": 1}
    assert cache.health().rebuilds == 1
    assert cache.stats.errors == 1


def test_the_whole_directory_deleted_while_in_use(open_cache: Opener, db_path: Path) -> None:
    cache = open_cache(memory_max_entries=0)
    cache.put("old", {"v": 0})
    shutil.rmtree(db_path.parent)
    assert cache.get("old") is None
    cache.put("new", {"v": 1})
    assert open_cache().get("new") == {"v": 1}
    assert cache.health().status == "ok"


def test_a_file_replaced_by_another_process_is_reopened(open_cache: Opener, db_path: Path) -> None:
    cache = open_cache(memory_max_entries=0)
    cache.put("mine", {"v": 0})
    # What a peer's rebuild looks like from here: the file and its sidecars are deleted and
    # a new file is created at the same path.
    for suffix in ("", "-wal", "-shm"):
        os.remove(f"{db_path}{suffix}")
    open_cache().put("theirs", {"v": 1})
    with capture_logs() as logs:
        assert cache.get("theirs") == {"v": 1}  # reopened, then found in the new file
    assert [e["action"] for e in _disk_errors(logs)] == ["reopened"]
    assert cache.get("mine") is None


def test_a_row_that_is_not_json_is_dropped(open_cache: Opener, db_path: Path) -> None:
    cache = open_cache(memory_max_entries=0)
    cache.put("k", {"v": 1})
    with closing(sqlite3.connect(db_path)) as conn, conn:
        conn.execute("UPDATE entries SET value = 'cos\\nsystem\\n(S\"echo\"\\ntR.' WHERE key='k'")
    with capture_logs() as logs:
        assert cache.get("k") is None
    assert [e["event"] for e in logs] == ["lm_cache.disk_bad_value"]
    assert "k" not in _rows(db_path)
    assert cache.stats.errors == 1
    assert cache.health().status == "ok"


def test_a_disk_that_keeps_failing_is_abandoned_for_memory(
    open_cache: Opener, db_path: Path
) -> None:
    cache = open_cache(memory_max_entries=100)
    for round_ in range(_cache_sqlite.MAX_RECOVERIES + 1):
        cache.put(f"k{round_}", {"v": round_})
        _garble(db_path)
        with capture_logs() as logs:
            cache.put(f"after{round_}", {"v": round_})
    assert [e["action"] for e in _disk_errors(logs)] == ["memory_only"]
    health = cache.health()
    assert health.status == "degraded"
    assert "memory only" in health.detail
    assert str(db_path) in health.detail
    assert health.rebuilds == _cache_sqlite.MAX_RECOVERIES
    # The cache still works, from memory, and never raises.
    cache.put("x", {"v": "memory"})
    assert cache.get("x") == {"v": "memory"}
    assert cache.get("k0") == {"v": 0}


def test_an_unusable_path_falls_back_to_memory_at_open(open_cache: Opener, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the cache directory should be")
    with capture_logs() as logs:
        cache = open_cache(disk_path=blocker / "lm_cache.sqlite3")
    assert [e["action"] for e in _disk_errors(logs)] == ["memory_only"]
    health = cache.health()
    assert health.status == "degraded"
    assert health.last_error is not None
    assert cache.stats.errors >= 1
    cache.put("k", {"v": 1})
    assert cache.get("k") == {"v": 1}


def test_a_file_of_an_unknown_schema_version_is_left_alone(
    open_cache: Opener, db_path: Path
) -> None:
    open_cache().close()
    with closing(sqlite3.connect(db_path)) as conn, conn:
        conn.execute("UPDATE meta SET value = 99 WHERE name = 'schema_version'")
    cache = open_cache()
    health = cache.health()
    assert health.status == "degraded"
    assert "schema version 99" in health.detail
    with closing(sqlite3.connect(db_path)) as conn:
        assert conn.execute("SELECT value FROM meta WHERE name='schema_version'").fetchone() == (
            99,
        )


def test_a_file_locked_at_open_is_opened_by_the_first_operation(
    open_cache: Opener, db_path: Path
) -> None:
    open_cache().put("k", {"v": 1})
    with closing(sqlite3.connect(db_path, isolation_level=None)) as other:
        other.execute("BEGIN IMMEDIATE")  # holds the write lock through the cache's open
        with capture_logs() as logs:
            cache = open_cache(memory_max_entries=0, busy_timeout=0.01)
        other.execute("ROLLBACK")
    assert {e["action"] for e in logs if e["event"] == "lm_cache.disk_busy"} == {"skipped"}
    assert cache.health().status == "ok"  # a busy file is not a broken one: nothing deleted
    with capture_logs() as logs:
        assert cache.get("k") == {"v": 1}
    assert [e["action"] for e in _disk_errors(logs)] == ["reopened"]
    cache.put("k2", {"v": 2})
    assert set(_rows(db_path)) == {"k", "k2"}


def test_a_disk_budget_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="disk_max_bytes"):
        Cache(disk_path=tmp_path / "c.sqlite3", disk_max_bytes=0)
