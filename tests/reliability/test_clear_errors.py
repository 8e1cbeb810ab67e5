"""Clear errors for hostile inputs (issue 20, item 10): each names what was wrong and where,
never a raw RecursionError, UnicodeDecodeError, KeyError or TypeError from deep inside."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

import dspy_actors as dsa
from dspy_actors.primitives.module import STATE_FORMAT
from tests.reliability.programs import StartApp


def test_a_signature_nested_thousands_deep_is_a_syntax_error() -> None:
    text = "question: " + "list[" * 5000 + "str" + "]" * 5000 + " -> answer"
    with pytest.raises(dsa.SignatureSyntaxError, match="nested more than 32 levels deep"):
        dsa.Signature(text)
    reasonable = "question: " + "list[" * 8 + "str" + "]" * 8 + " -> answer"
    assert list(dsa.Signature(reasonable).fields) == ["question", "answer"]


def test_a_signature_without_inputs_is_a_syntax_error() -> None:
    with pytest.raises(dsa.SignatureSyntaxError, match="at least one input field before '->'"):
        dsa.Signature(" -> answer")


def _state_file(tmp_path: Path, payload: object) -> Path:
    path = tmp_path / "state.json"
    path.write_text(json.dumps(payload), encoding="utf-8")
    return path


def _meta() -> dict[str, object]:
    return {"format": STATE_FORMAT, "version": 1, "program": "Predict"}


def test_state_files_that_are_not_ours_are_state_errors(tmp_path: Path) -> None:
    program = dsa.Predict("question -> answer")
    pickled = tmp_path / "state.bin"  # a .pkl name is refused before reading
    pickled.write_bytes(pickle.dumps({"self": {"demos": []}}))
    with pytest.raises(dsa.StateError, match=r"state\.bin' is not a JSON state file.*pickle"):
        program.load(pickled)
    deep = tmp_path / "deep.json"
    deep.write_text('{"__metadata__": {}, "state": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(dsa.StateError, match=r"deep\.json' is not a state file: .*too deeply"):
        program.load(deep)
    with pytest.raises(dsa.StateError, match="has no 'state'"):
        program.load(_state_file(tmp_path, {"__metadata__": _meta()}))
    with pytest.raises(dsa.StateError, match="'state' must be an object, not list"):
        program.load(_state_file(tmp_path, {"__metadata__": _meta(), "state": [1]}))
    with pytest.raises(dsa.StateError, match="no '__metadata__' object"):
        program.load(_state_file(tmp_path, [1, 2, 3]))
    with pytest.raises(dsa.StateError, match="cannot read the state file"):
        program.load(tmp_path / "missing.json")
    # And a good one still loads.
    program.save(tmp_path / "good.json")
    assert dsa.Predict("question -> answer").load(tmp_path / "good.json").demos == []


def test_upgrade_with_something_that_is_no_state_is_a_clear_error(start_app: StartApp) -> None:
    app = start_app()
    qa = app.serve("qa", dsa.Predict("question -> answer"))
    with pytest.raises(TypeError, match=r"upgrade of 'qa' takes a Module or a state dict.*list"):
        qa.upgrade([1, 2, 3])
    deep: dict[str, object] = {}
    node = deep
    for _ in range(5_000):
        node["x"] = {}
        node = node["x"]  # type: ignore[assignment]
    with pytest.raises(dsa.StateError, match="nested more than 64 levels"):
        qa.upgrade({"self": deep})
    assert qa.version == 1  # nothing was started
    assert qa.call(question="still served").answer
