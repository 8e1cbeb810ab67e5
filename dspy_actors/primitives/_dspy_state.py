"""Reading a JSON state file saved by DSPy 3.x (``program.save("x.json")``).

DSPy's file is one object keyed by predictor path (``"generate.predict"``, ``"hops[0]"``;
a lone Predict's state sits at the top level), each ``{"traces", "train", "demos",
"signature": {"instructions", "fields": [{"prefix", "description"}, ...]}, "lm"}``, plus a
``"metadata"`` entry with ``dependency_versions``. Predictor paths are named the same way
here, so the state maps one to one onto the equivalent program. Fields carry no names in
DSPy's file: they are matched in order, and their count must agree. A description equal to
DSPy's placeholder (``"${question}"``) means "none given": the field keeps its own. The LM
entry is not restored (a state file never carries credentials; set the LM yourself).
Only JSON is read: nothing in the file is executed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dspy_actors.primitives._parameter import StateError

__all__ = ["from_dspy_state", "is_dspy_state"]

_PREDICTOR_KEYS = frozenset({"demos", "signature"})


def _is_predictor_state(value: Any) -> bool:
    return isinstance(value, Mapping) and value.keys() >= _PREDICTOR_KEYS


def is_dspy_state(payload: Any) -> bool:
    """Whether ``payload`` looks like a state file DSPy wrote."""
    if not isinstance(payload, Mapping):
        return False
    meta = payload.get("metadata")
    if isinstance(meta, Mapping) and "dspy" in (meta.get("dependency_versions") or {}):
        return True
    entries = [v for k, v in payload.items() if k != "metadata"]
    return _is_predictor_state(payload) or (
        bool(entries) and all(map(_is_predictor_state, entries))
    )


def from_dspy_state(
    payload: Mapping[str, Any],
    fields_of: Mapping[str, Sequence[tuple[str, str]]],
    where: str,
) -> dict[str, Any]:
    """Our state (``Module.load_state``'s input) from DSPy's ``payload``.

    ``fields_of``: each predictor path of the program loading it, with its fields' names
    and descriptions in order (inputs then outputs); ``"self"`` if the program is itself a
    predictor. Raises
    :class:`StateError` naming the file (``where``), the predictor and what differs."""
    body = {k: v for k, v in payload.items() if k != "metadata"}
    if _is_predictor_state(body):  # a lone predictor's file
        body = {"self": body}
    elif "self" in fields_of and len(fields_of) == 1 and len(body) == 1:
        body = {"self": next(iter(body.values()))}
    unexpected = sorted(set(body) - set(fields_of))
    missing = sorted(set(fields_of) - set(body))
    if unexpected or missing:
        parts = []
        if missing:
            parts.append(f"it has no state for {missing}")
        if unexpected:
            parts.append(f"it holds state for {unexpected}, which this program does not have")
        raise StateError(
            f"{where} was saved by DSPy for a different program: {'; '.join(parts)} "
            f"(this program's predictors are {list(fields_of)})"
        )
    return {path: _predictor(body[path], fields_of[path], where, path) for path in fields_of}


def _predictor(state: Any, own: Sequence[tuple[str, str]], where: str, path: str) -> dict[str, Any]:
    names = [name for name, _ in own]
    if not _is_predictor_state(state):
        raise StateError(f"{where}: predictor {path!r} needs 'demos' and 'signature'")
    signature = state["signature"]
    fields = signature.get("fields") if isinstance(signature, Mapping) else None
    if not isinstance(fields, list) or not all(isinstance(f, Mapping) for f in fields):
        raise StateError(f"{where}: predictor {path!r} has no list of signature fields")
    if len(fields) != len(names):
        raise StateError(
            f"{where}: predictor {path!r} has {len(fields)} signature fields in the file but "
            f"{len(names)} here ({list(names)}): it was saved for a different signature"
        )
    demos = state["demos"]
    if not isinstance(demos, list) or not all(isinstance(d, Mapping) for d in demos):
        raise StateError(f"{where}: predictor {path!r}: 'demos' must be a list of objects")
    ours = []
    for (name, own_desc), field in zip(own, fields, strict=True):
        description = str(field.get("description") or "")
        if description == f"${{{name}}}":
            description = own_desc  # DSPy's placeholder: none given, keep the field's own
        ours.append({"name": name, "prefix": str(field.get("prefix") or ""), "desc": description})
    instructions = signature.get("instructions")
    return {
        "demos": [dict(d) for d in demos],
        "signature": {
            "instructions": instructions if isinstance(instructions, str) else None,
            "fields": ours,
        },
        "lm": None,
    }
