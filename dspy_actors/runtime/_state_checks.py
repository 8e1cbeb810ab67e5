"""What ``handle.upgrade(...)`` accepts, checked before anything starts: a wrong argument is
a clear error naming the program and what was given, never a raw error from deep inside."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dspy_actors.primitives._parameter import StateError
from dspy_actors.primitives.module import Module

# A learned state is a shallow tree (parameter path -> demos -> fields); deeper input is
# refused rather than walked (the checks and stores below walk it recursively).
MAX_STATE_DEPTH = 64


def check_upgrade(program: str, kind: str, state_or_module: Any) -> None:
    """Raise TypeError or StateError unless ``state_or_module`` can upgrade ``program``:
    a Module or a state dict (as ``dump_state`` returns) for a served module, a state dict
    for a pipeline."""
    if isinstance(state_or_module, Module):
        if kind != "module":
            raise TypeError(
                f"upgrade of pipeline {program!r}: pass a state dict (step id -> state), "
                "not a Module"
            )
        return
    if not isinstance(state_or_module, Mapping):
        wanted = "a Module or a state dict" if kind == "module" else "a state dict"
        raise TypeError(
            f"upgrade of {program!r} takes {wanted} (as dump_state() returns), "
            f"got {type(state_or_module).__name__}"
        )
    depth = _depth(state_or_module, MAX_STATE_DEPTH + 1)
    if depth > MAX_STATE_DEPTH:
        raise StateError(
            f"upgrade of {program!r}: the state is nested more than {MAX_STATE_DEPTH} levels "
            "deep; it is not a state dump_state() returns"
        )


def _depth(value: Any, limit: int) -> int:
    """How deep ``value`` nests (containers), walked without recursion, up to ``limit``."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if level > deepest:
            deepest = level
            if deepest >= limit:
                return deepest
        if isinstance(item, Mapping):
            stack.extend((child, level + 1) for child in item.values())
        elif isinstance(item, list | tuple):
            stack.extend((child, level + 1) for child in item)
    return deepest
