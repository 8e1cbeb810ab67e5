"""DeadLetterStore: poison inputs with their exception, in a real SQLite file."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from structlog.testing import capture_logs

from dspy_actors.runtime._dead_letters import (
    MAX_MESSAGE_CHARS,
    REDACTED,
    REPR_MARKER,
    DeadLetter,
    DeadLetterStore,
    jsonify,
)
from dspy_actors.runtime._parameter_store import ParameterStore, StoreError
from tests.dspy_actors.runtime.conftest import store_location


class PoisonError(Exception):
    pass


class Doc(BaseModel):
    title: str
    pages: int


class Opaque:
    def __repr__(self) -> str:
        return "<Opaque 7>"


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "dead_letters.sqlite"


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, path: Path) -> Iterator[DeadLetterStore]:
    """The store on each backend; tests of the SQLite file itself are marked sqlite_only."""
    s = DeadLetterStore(store_location(request, path))
    yield s
    s.close()


def _explode(question: str) -> None:
    raise PoisonError(f"cannot answer {question!r}")


def _caught() -> PoisonError:
    try:
        _explode("why?")
    except PoisonError as exc:
        return exc
    raise AssertionError("unreachable")


def test_add_from_an_exception_and_read_back(store: DeadLetterStore) -> None:
    letter = store.add(
        program="qa", module_path="qa/answer", inputs={"question": "why?"}, exception=_caught(),
        attempts=3,
    )  # fmt: skip
    assert letter.exception_type == f"{__name__}.PoisonError"
    assert letter.message == "cannot answer 'why?'"
    assert "_explode" in letter.traceback
    assert "PoisonError" in letter.traceback
    assert letter.attempts == 3
    assert letter.replayed_at is None
    assert letter.replayable

    assert store.get(letter.id) == letter
    assert store.list() == [letter]
    assert store.count() == 1
    assert store.get("no-such-id") is None


def test_add_from_strings_and_builtin_type_names(store: DeadLetterStore) -> None:
    letter = store.add(
        program="qa",
        module_path="qa",
        inputs={},
        exception=ValueError("boom"),
        traceback="given traceback",
    )
    assert letter.exception_type == "ValueError"  # builtins are not module-qualified
    assert letter.traceback == "given traceback"  # explicit strings win
    bare = store.add(program="qa", module_path="qa", inputs={"a": 1})
    assert (bare.exception_type, bare.message, bare.traceback) == ("unknown", "", "")


def test_non_json_inputs_are_stored_as_marked_reprs(store: DeadLetterStore) -> None:
    inputs = {
        "question": "q",
        "k": 5,
        "docs": [Doc(title="a", pages=2), ("tuple", 1)],
        "blob": b"\x00\x01",
        "score": math.inf,
        "thing": Opaque(),
        "nested": {1: {3, 4}},
    }
    letter = store.add(program="qa", module_path="qa/retrieve", inputs=inputs)
    stored = store.get(letter.id)
    assert stored is not None
    assert stored.inputs["question"] == "q"
    assert stored.inputs["k"] == 5
    assert stored.inputs["docs"] == [{"title": "a", "pages": 2}, ["tuple", 1]]
    assert stored.inputs["blob"] == {REPR_MARKER: "b'\\x00\\x01'", "__type__": "bytes"}
    assert stored.inputs["score"] == {REPR_MARKER: "inf", "__type__": "float"}
    assert stored.inputs["thing"] == {REPR_MARKER: "<Opaque 7>", "__type__": f"{__name__}.Opaque"}
    assert stored.inputs["nested"] == {"1": {REPR_MARKER: "{3, 4}", "__type__": "set"}}
    assert not stored.replayable


def test_secret_looking_inputs_are_redacted_not_refused(store: DeadLetterStore) -> None:
    letter = store.add(
        program="qa",
        module_path="qa",
        inputs={"question": "q", "headers": {"Authorization": "Bearer sk-1", "accept": "json"}},
    )
    stored = store.get(letter.id)
    assert stored is not None
    assert stored.inputs["headers"] == {"Authorization": REDACTED, "accept": "json"}
    assert "sk-1" not in repr(stored)
    assert not stored.replayable


def test_list_filter_replay_and_remove(store: DeadLetterStore) -> None:
    a = store.add(program="qa", module_path="qa", inputs={"i": 1})
    b = store.add(program="rag", module_path="rag/answer", inputs={"i": 2})
    c = store.add(program="qa", module_path="qa", inputs={"i": 3})
    assert [x.id for x in store.list()] == [a.id, b.id, c.id]  # oldest first
    assert [x.id for x in store.list(program="qa")] == [a.id, c.id]
    assert store.count(program="rag") == 1

    replayed = store.mark_replayed(a.id)
    assert isinstance(replayed, DeadLetter)
    assert replayed.replayed_at is not None
    assert replayed.replayed_at >= a.created_at
    assert [x.id for x in store.list(program="qa")] == [c.id]
    assert [x.id for x in store.list(program="qa", include_replayed=True)] == [a.id, c.id]
    assert store.count() == 2
    assert store.count(include_replayed=True) == 3
    assert store.mark_replayed("unknown") is None

    assert store.remove(b.id) is True
    assert store.remove(b.id) is False
    assert store.get(b.id) is None
    assert store.count(include_replayed=True) == 2


def test_oldest_and_replayed_letters_are_pruned_past_the_limit(path: Path) -> None:
    with DeadLetterStore(path, max_letters=3) as s:
        first = s.add(program="p", module_path="p", inputs={"i": 0})
        second = s.add(program="p", module_path="p", inputs={"i": 1})
        third = s.add(program="p", module_path="p", inputs={"i": 2})
        s.mark_replayed(third.id)
        with capture_logs() as logs:
            fourth = s.add(program="p", module_path="p", inputs={"i": 3})
            fifth = s.add(program="p", module_path="p", inputs={"i": 4})
        # The replayed letter goes first, then the oldest unreplayed one.
        kept = [x.id for x in s.list(include_replayed=True)]
        assert kept == [second.id, fourth.id, fifth.id]
        assert first.id not in kept
        assert third.id not in kept
        assert [e["event"] for e in logs] == ["dead_letters.pruned"] * 2


def test_long_messages_and_tracebacks_are_clipped(store: DeadLetterStore) -> None:
    letter = store.add(
        program="p", module_path="p", inputs={}, message="m" * 100_000, traceback="t" * 10
    )
    assert len(letter.message) < MAX_MESSAGE_CHARS + 100
    assert "characters cut" in letter.message
    assert letter.traceback == "t" * 10


def test_many_threads_add(store: DeadLetterStore) -> None:
    ids: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def work(t: int) -> None:
        try:
            for i in range(20):
                letter = store.add(program=f"p{t % 4}", module_path="m", inputs={"t": t, "i": i})
                with lock:
                    ids.append(letter.id)
        except BaseException as exc:
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,), name=f"dl-{t}") for t in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
        assert not t.is_alive()
    assert errors == []
    assert len(set(ids)) == 320
    assert store.count() == 320
    assert store.count(program="p1") == 80


@pytest.mark.sqlite_only
def test_deleted_file_is_rebuilt_and_reported(store: DeadLetterStore, path: Path) -> None:
    store.add(program="qa", module_path="qa", inputs={"i": 1})
    path.unlink()
    with capture_logs() as logs:
        assert store.list() == []
    health = store.health()
    assert health.history_lost
    assert health.rebuilds == 1
    assert logs[0]["event"] == "store.history_lost"
    letter = store.add(program="qa", module_path="qa", inputs={"i": 2})
    assert store.list() == [letter]


def test_one_file_can_hold_both_stores(path: Path) -> None:
    with DeadLetterStore(path) as letters, ParameterStore(path) as params:
        letter = letters.add(program="qa", module_path="qa", inputs={"q": "x"})
        assert params.save("qa", {"p": {"demos": []}}) == 1
        assert letters.get(letter.id) == letter
        assert params.load("qa") == {"p": {"demos": []}}


def test_closed_store_raises_store_error(path: Path) -> None:
    s = DeadLetterStore(path)
    s.close()
    with pytest.raises(StoreError, match="closed"):
        s.count()


def test_jsonify_keeps_plain_json_as_is() -> None:
    data: dict[str, Any] = {"a": [1, 2.5, None, True, "s", {"b": []}]}
    assert jsonify(data) == data
