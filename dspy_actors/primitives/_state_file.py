"""Reading a state file written by ``Module.save``: every way it can be wrong is a
:class:`StateError` naming the file and what is wrong with it, never a raw
``UnicodeDecodeError``, ``RecursionError`` or ``KeyError``.

Only JSON is read, never a pickle: loading a state file never runs code.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from dspy_actors.primitives._parameter import StateError

__all__ = ["read_json_file", "read_state_file", "state_of_payload"]


def read_state_file(
    path: str | os.PathLike[str], *, state_format: str, version: int
) -> dict[str, Any]:
    """The ``state`` of the file at ``path`` (a dict of parameter path -> state), checked
    to be a ``state_format`` file of ``version``."""
    return state_of_payload(
        read_json_file(path), repr(str(path)), state_format=state_format, version=version
    )


def read_json_file(path: str | os.PathLike[str]) -> Any:
    """The JSON value in the file at ``path``; a StateError saying why it is not one."""
    where = repr(str(path))
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise StateError(f"cannot read the state file {where}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        hint = (
            " (a pickle? state files are JSON, written by Module.save)"
            if raw[:1] == b"\x80"
            else ""
        )
        raise StateError(
            f"{where} is not a JSON state file: byte {exc.start} is not UTF-8 text{hint}"
        ) from None
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StateError(f"{where} is not a JSON state file: {exc}") from None
    except RecursionError:
        raise StateError(
            f"{where} is not a state file: its JSON is nested too deeply to read"
        ) from None
    return payload


def state_of_payload(
    payload: Any, where: str, *, state_format: str, version: int
) -> dict[str, Any]:
    """The ``state`` of a parsed state file (``where`` names it in errors), checked to be a
    ``state_format`` file of ``version``."""
    meta = payload.get("__metadata__") if isinstance(payload, dict) else None
    if not isinstance(payload, dict) or not isinstance(meta, dict):
        raise StateError(f"{where} is not a {state_format} file (no '__metadata__' object)")
    if meta.get("format") != state_format:
        raise StateError(
            f"{where} is not a {state_format} file (its format is {meta.get('format')!r})"
        )
    if meta.get("version") != version:
        raise StateError(f"{where} has state version {meta.get('version')!r}; expected {version}")
    if "state" not in payload:
        raise StateError(f"{where} has no 'state' (the file is incomplete or was edited)")
    state = payload["state"]
    if not isinstance(state, dict):
        raise StateError(f"{where}: 'state' must be an object, not {type(state).__name__}")
    return state
