"""ParameterStore: versioned JSON states in a real SQLite file, shared by threads and
processes, refusing secrets, and surviving a deleted, corrupt or replaced file."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from dspy_actors.runtime._parameter_store import ParameterStore, StoreError, looks_like_secret
from tests.dspy_actors.runtime.conftest import store_location

STATE: dict[str, Any] = {
    "retrieve": {"k": 5},
    "answer.predict": {
        "demos": [{"question": "2+2?", "answer": "4"}, {"question": "1+1?", "answer": "2"}],
        "signature": {"instructions": "Answer briefly.", "fields": ["question", "answer"]},
        "lm": {"model": "openai/gpt-4o-mini", "temperature": 0.0, "max_tokens": 256},
    },
}


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "params.sqlite"


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, path: Path) -> Iterator[ParameterStore]:
    """The store on each backend; tests of the SQLite file itself are marked sqlite_only."""
    s = ParameterStore(store_location(request, path))
    yield s
    s.close()


def _join_all(threads: list[threading.Thread]) -> None:
    for t in threads:
        t.join(timeout=30)
        assert not t.is_alive(), f"{t.name} did not finish"


# ------------------------------------------------------------------------------- basics


def test_save_load_roundtrip_and_versions(store: ParameterStore) -> None:
    assert store.load("qa") is None
    assert store.save("qa", STATE) == 1
    second = {**STATE, "retrieve": {"k": 3}}
    assert store.save("qa", second) == 2
    assert store.save("other", {"p": {"demos": []}}) == 1  # numbering is per program

    assert store.load("qa") == second
    assert store.load("qa", version=1) == STATE
    assert store.load("qa", version=3) is None
    assert store.latest_version("qa") == 2
    assert store.latest_version("nope") is None

    infos = store.versions("qa")
    assert [i.version for i in infos] == [1, 2]
    assert infos[0].saved_at <= infos[1].saved_at
    assert infos[0].size == len(json.dumps(STATE, separators=(",", ":")).encode())
    assert store.programs() == ["other", "qa"]


@pytest.mark.sqlite_only
def test_states_are_stored_as_json_text(store: ParameterStore, path: Path) -> None:
    store.save("qa", STATE)
    with sqlite3.connect(path) as raw:
        (text,) = raw.execute("SELECT state FROM parameter_versions").fetchone()
    raw.close()
    assert isinstance(text, str)
    assert json.loads(text) == STATE


def test_delete_keeps_version_numbers_monotonic(store: ParameterStore) -> None:
    store.save("qa", {"a": 1})
    store.save("qa", {"a": 2})
    assert store.delete("qa") == 2
    assert store.load("qa") is None
    assert store.versions("qa") == []
    assert store.programs() == []
    # A number once given never names another state.
    assert store.save("qa", {"a": 3}) == 3
    assert store.delete("missing") == 0


def test_keep_versions_prunes_old_history(path: Path) -> None:
    with ParameterStore(path, keep_versions=2) as s:
        for i in range(5):
            s.save("qa", {"i": i})
        assert [v.version for v in s.versions("qa")] == [4, 5]
        assert s.load("qa", version=1) is None
        assert s.load("qa") == {"i": 4}


def test_history_survives_reopening(path: Path) -> None:
    with ParameterStore(path) as s:
        s.save("qa", STATE)
    with ParameterStore(path) as s:
        assert s.load("qa") == STATE
        assert s.save("qa", {"a": 1}) == 2
        assert not s.health().history_lost


# ----------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    "key",
    ["api_key", "API-KEY", "openai_api_key", "x-api-key", "Authorization", "client_secret",
     "password", "access_token", "aws_secret_access_key", "private_key"],
)  # fmt: skip
def test_secret_looking_keys_are_refused_anywhere(store: ParameterStore, key: str) -> None:
    state = {"answer.predict": {"demos": [{"question": "q"}, {"lm": {key: "sk-123"}}]}}
    with pytest.raises(ValueError, match="secret") as info:
        store.save("qa", state)
    assert f"answer.predict.demos[1].lm.{key}" in str(info.value)
    assert store.load("qa") is None  # nothing was written


@pytest.mark.parametrize(
    "key", ["max_tokens", "prompt_tokens", "secret_sauce", "keyword", "author", "passage"]
)
def test_ordinary_keys_are_not_secrets(key: str) -> None:
    assert not looks_like_secret(key)


@pytest.mark.parametrize(
    ("state", "where"),
    [
        ({"p": {"demos": {1, 2}}}, "p.demos is a set"),
        ({"p": {"x": object()}}, "p.x is a object"),
        ({"p": {"score": float("nan")}}, "p.score is nan"),
        ({"p": {1: "a"}}, "p has a int key"),
        ({"p": [b"bytes"]}, "p[0] is a bytes"),
    ],
)
def test_non_json_states_are_refused(store: ParameterStore, state: Any, where: str) -> None:
    with pytest.raises(ValueError, match="not JSON") as info:
        store.save("qa", state)
    assert where in str(info.value)


def test_bad_program_names_and_non_dict_states(store: ParameterStore) -> None:
    with pytest.raises(ValueError, match="program name"):
        store.save("", {})
    with pytest.raises(ValueError, match="is a dict"):
        store.save("qa", [1, 2])  # type: ignore[arg-type]


# --------------------------------------------------------------------------- concurrency


def test_many_threads_save_and_load(store: ParameterStore) -> None:
    n_threads, per_thread = 16, 20
    got: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def work(t: int) -> None:
        try:
            for i in range(per_thread):
                version = store.save("qa", {"thread": t, "i": i})
                loaded = store.load("qa", version=version)
                assert loaded == {"thread": t, "i": i}
                with lock:
                    got.append(version)
        except BaseException as exc:
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,), name=f"ps-{t}") for t in range(16)]
    for t in threads:
        t.start()
    _join_all(threads)
    assert errors == []
    assert sorted(got) == list(range(1, n_threads * per_thread + 1))


_WORKER = """
import sys
from dspy_actors.runtime._parameter_store import ParameterStore
store = ParameterStore(sys.argv[1], busy_timeout=30)
versions = [store.save("shared", {"proc": sys.argv[2], "i": i}) for i in range(int(sys.argv[3]))]
store.close()
print(",".join(map(str, versions)))
"""


def test_processes_share_the_file(path: Path) -> None:
    per_proc = 25
    with ParameterStore(path) as mine:
        mine.save("shared", {"proc": "parent"})
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", _WORKER, str(path), str(p), str(per_proc)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for p in range(3)
        ]
        versions: list[int] = [1]
        for proc in procs:
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
            versions += [int(v) for v in out.strip().split(",")]
        assert sorted(versions) == list(range(1, 3 * per_proc + 2))
        # The parent sees every other process's saves.
        assert [v.version for v in mine.versions("shared")] == sorted(versions)
        assert mine.load("shared")["proc"] in {"0", "1", "2"}  # type: ignore[index]


# --------------------------------------------------------------------------- robustness


@pytest.mark.sqlite_only
def test_deleted_file_is_rebuilt_and_reported(store: ParameterStore, path: Path) -> None:
    store.save("qa", STATE)
    path.unlink()
    with capture_logs() as logs:
        assert store.load("qa") is None
    health = store.health()
    assert health.history_lost
    assert health.rebuilds == 1
    assert health.status == "ok"
    assert any(e["event"] == "store.history_lost" and e["log_level"] == "warning" for e in logs), (
        logs
    )
    assert path.exists()
    assert store.save("qa", {"a": 1}) == 1  # numbering restarts with the new file
    assert store.load("qa") == {"a": 1}


@pytest.mark.sqlite_only
def test_file_overwritten_with_garbage_is_moved_aside(store: ParameterStore, path: Path) -> None:
    store.save("qa", STATE)
    path.write_bytes(b"this is not a database" * 100)
    with capture_logs():
        assert store.load("qa") is None
        assert store.programs() == []
    health = store.health()
    assert health.history_lost
    assert health.rebuilds == 1
    (kept,) = health.quarantined
    # The broken file is kept for forensics, never deleted.
    assert Path(kept).read_bytes().startswith(b"this is not a database")
    assert store.save("qa", STATE) == 1


def test_corrupt_pages_behind_a_valid_header_are_rebuilt_on_open(path: Path) -> None:
    with ParameterStore(path) as s:
        s.save("qa", STATE)
    data = bytearray(path.read_bytes())
    data[100:4096] = b"\xff" * (4096 - 100)  # the schema b-tree of page 1
    path.write_bytes(bytes(data))
    with capture_logs() as logs, ParameterStore(path) as s:
        assert s.load("qa") is None
        health = s.health()
        assert health.history_lost
        assert len(health.quarantined) == 1
        assert s.save("qa", STATE) == 1
    assert [e["event"] for e in logs].count("store.history_lost") == 1


def test_garbage_file_at_open_is_moved_aside(path: Path) -> None:
    path.write_text("plain text, not SQLite")
    with capture_logs(), ParameterStore(path) as s:
        assert s.health().history_lost
        assert s.load("qa") is None
        assert s.save("qa", STATE) == 1


def test_file_rebuilt_by_another_process_is_reopened(path: Path) -> None:
    a = ParameterStore(path)
    try:
        a.save("qa", {"from": "a"})
        path.unlink()
        with capture_logs():
            b = ParameterStore(path)  # as another process would: a new file at the path
            try:
                b.save("qa", {"from": "b"})
                assert a.load("qa") == {"from": "b"}
            finally:
                b.close()
        health = a.health()
        assert health.history_lost
        assert health.reopens == 1
        assert health.rebuilds == 0
    finally:
        a.close()


@pytest.mark.sqlite_only
def test_threads_keep_working_while_the_file_is_deleted(store: ParameterStore, path: Path) -> None:
    errors: list[BaseException] = []
    stop = threading.Event()
    started = threading.Barrier(9, timeout=10)

    def work() -> None:
        started.wait()
        try:
            while not stop.is_set():
                version = store.save("qa", {"x": 1})
                store.load("qa", version=version)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, name=f"ps-del-{i}") for i in range(8)]
    for t in threads:
        t.start()
    with capture_logs():
        started.wait()
        path.unlink()
        for _ in range(200):  # until some thread noticed and rebuilt it
            if store.health().rebuilds:
                break
            stop.wait(0.01)
        stop.set()
        _join_all(threads)
    assert errors == []
    assert store.health().rebuilds == 1
    assert store.load("qa") == {"x": 1}


def test_lock_held_too_long_raises_store_error_not_sqlite_error(path: Path) -> None:
    with ParameterStore(path, busy_timeout=0.05) as s:
        s.save("qa", STATE)
        holder = sqlite3.connect(path, isolation_level=None)
        try:
            holder.execute("BEGIN IMMEDIATE")
            with pytest.raises(StoreError, match="lock") as info:
                s.save("qa", {"a": 1})
            assert not isinstance(info.value, sqlite3.Error)
            assert s.load("qa") == STATE  # WAL: readers are not blocked by the writer
            holder.execute("ROLLBACK")
        finally:
            holder.close()
        assert s.save("qa", {"a": 1}) == 2
        assert not s.health().history_lost


@pytest.mark.sqlite_only
def test_damaged_row_is_reported_not_raised(store: ParameterStore, path: Path) -> None:
    store.save("qa", STATE)
    with sqlite3.connect(path) as raw:
        raw.execute("UPDATE parameter_versions SET state = 'not json {'")
    raw.close()
    with capture_logs() as logs:
        assert store.load("qa") is None
    assert store.health().errors == 1
    assert logs[0]["event"] == "store.bad_row"


def test_file_of_a_newer_schema_is_refused_and_left_alone(path: Path) -> None:
    with ParameterStore(path) as s:
        s.save("qa", STATE)
    with sqlite3.connect(path) as raw:
        raw.execute(
            "UPDATE dspy_actors_meta SET value = '99' "
            "WHERE store = 'parameter_store' AND name = 'schema_version'"
        )
    raw.close()
    with pytest.raises(StoreError, match="schema version 99"):
        ParameterStore(path)
    assert list(path.parent.glob("*.corrupt-*")) == []


def test_unusable_path_raises_store_error(tmp_path: Path) -> None:
    (tmp_path / "adir").mkdir()
    with pytest.raises(StoreError, match="cannot open"):
        ParameterStore(tmp_path / "adir")
    assert (tmp_path / "adir").is_dir()  # not "quarantined": it was never a store


def test_closed_store_raises_store_error(path: Path) -> None:
    s = ParameterStore(path)
    s.save("qa", STATE)
    s.close()
    s.close()
    assert s.health().status == "closed"
    with pytest.raises(StoreError, match="closed"):
        s.load("qa")
