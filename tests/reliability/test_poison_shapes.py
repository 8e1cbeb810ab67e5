"""Poison of any shape (issue 20, item 3): every input gets a fingerprint, however deep or
odd; an input that crashes its module is quarantined after the threshold; an input no
request can carry is refused at once; the caller only ever sees our errors."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

import dspy_actors as dsa
from dspy_actors.runtime._dead_letters import DeadLetterStore
from dspy_actors.runtime._errors import ModuleCrashed, RuntimeCallError, UnencodableInput
from dspy_actors.runtime._poison import fingerprint
from dspy_actors.testing import SimLM
from tests.reliability.programs import StartApp

# Ten times the interpreter's recursion limit: any recursive walk of it fails, as at 100k
# levels, at a tenth of the cost (a walk is linear in the depth).
DEEP = 10 * sys.getrecursionlimit()


def _nested(depth: int, leaf: Any = "bottom") -> dict[str, Any]:
    root: dict[str, Any] = {}
    node = root
    for _ in range(depth - 1):
        node["x"] = {}
        node = node["x"]
    node["x"] = leaf
    return root


class _BadRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no repr for you")


def test_every_input_has_a_stable_fingerprint() -> None:
    cycle: list[Any] = []
    cycle.append(cycle)
    odd_inputs: list[dict[str, Any]] = [
        {"q": _nested(DEEP)},
        {"q": "lone \ud800 surrogate"},
        {"q": cycle},
        {"q": _BadRepr()},
        {"q": {1: "int key", ("t",): "tuple key"}},
        {"q": float("nan")},
    ]
    prints = [fingerprint("p", inputs) for inputs in odd_inputs]
    assert prints == [fingerprint("p", inputs) for inputs in odd_inputs]  # stable
    assert len(set(prints)) == len(prints)  # and telling them apart
    # Same content, same print; any difference in content, type or depth, another.
    assert fingerprint("p", {"a": 1, "b": [2]}) == fingerprint("p", {"b": [2], "a": 1})
    assert fingerprint("p", {"a": 1}) != fingerprint("p", {"a": "1"})
    assert fingerprint("p", {"a": 1}) != fingerprint("p", {"a": True})
    assert fingerprint("p", {"q": _nested(DEEP)}) != fingerprint("p", {"q": _nested(DEEP - 1)})
    assert fingerprint("p", {"q": "\ud800"}) != fingerprint("p", {"q": "\ud801"})
    assert fingerprint("p", {"a": 1}) != fingerprint("other", {"a": 1})


def test_a_deeply_nested_input_is_quarantined_after_the_threshold(start_app: StartApp) -> None:
    app = start_app(poison_threshold=2)
    qa = app.serve("qa", dsa.Predict("question -> answer"))
    deep = {"question": _nested(DEEP)}
    errors: list[BaseException] = []
    for _ in range(4):
        with pytest.raises(RuntimeCallError) as caught:
            qa.call_with(deep, timeout=60.0)
        errors.append(caught.value)
    kinds = [type(e).__name__ for e in errors]
    assert kinds == ["ModuleCrashed", "DeadLettered", "DeadLettered", "DeadLettered"]
    assert isinstance(errors[0], ModuleCrashed)
    letters = app.dead_letters("qa")
    assert len(letters) == 1
    assert letters[0].exception_type == "RecursionError"
    assert "nested deeper than" in str(letters[0].inputs)
    assert qa.call(question="healthy").answer  # the program serves other inputs


def test_an_input_no_request_can_carry_is_refused_at_once_naming_where(
    start_app: StartApp, sim_lm: SimLM
) -> None:
    app = start_app()
    qa = app.serve("qa", dsa.Predict("question -> answer"))
    sent = sim_lm.request_count
    with pytest.raises(UnencodableInput) as error:
        qa.call(question="caf\udce9 au lait")  # what errors="surrogateescape" decoding gives
    text = str(error.value)
    assert "'question'" in text
    assert "'\\udce9' at index 3" in text
    assert isinstance(error.value, ValueError)
    with pytest.raises(UnencodableInput, match=r"input 'items'\[1\]\['k'\] of 'qa'"):
        qa.call_with({"question": "ok", "items": [0, {"k": "\ud800"}]})
    assert sim_lm.request_count == sent  # nothing reached the LM
    assert qa.call(question="café au lait").answer


def test_a_dead_letter_is_written_whatever_the_input_holds(tmp_path: Path) -> None:
    store = DeadLetterStore(tmp_path / "letters.sqlite3")
    try:
        letter = store.add(
            program="qa",
            module_path="qa",
            inputs={"q": "a\ud800b", "deep": _nested(5_000), "\udcff key": 1},
            exception=UnicodeEncodeError("utf-8", "a\ud800b", 1, 2, "surrogates not allowed"),
        )
        stored = store.get(letter.id)
        assert stored is not None
        assert stored.inputs["q"]["__type__"] == "str"
        assert "\\ud800" in stored.inputs["q"]["__repr__"]
        assert not stored.replayable
    finally:
        store.close()
