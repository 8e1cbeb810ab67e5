"""What to say when learned state is loaded into a program it does not belong to.

There are two shapes of state: one predictor's (``{"demos": [...], "signature": {...}}``,
what ``Predict.dump_state()`` gives) and a program's (``{"<predictor path>": <predictor
state>, ...}``, what ``Module.dump_state()`` gives for a composite). Mixing them up is
the usual mistake; these hints name it and the fix.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["looks_like_predictor_state", "looks_like_program_state", "shape_hint"]

_PREDICTOR_KEYS = frozenset({"demos", "signature"})


def looks_like_predictor_state(state: Any) -> bool:
    return isinstance(state, Mapping) and set(state) >= _PREDICTOR_KEYS


def looks_like_program_state(state: Any) -> bool:
    """Keys are predictor paths and every value is a predictor's state."""
    return (
        isinstance(state, Mapping)
        and bool(state)
        and all(looks_like_predictor_state(v) for v in state.values())
    )


def shape_hint(state: Any, target: str, target_paths: list[str]) -> str | None:
    """Why ``state`` cannot load into ``target`` (whose predictors are ``target_paths``),
    if the cause is the shape of the state; None otherwise."""
    if looks_like_program_state(state) and target_paths == ["self"]:
        paths = sorted(state)
        return (
            f"this is the state of a program with predictors {paths}, not of one predictor: "
            f"load it into that program, or give {target} one predictor's part, e.g. "
            f"state[{paths[0]!r}]"
        )
    if looks_like_predictor_state(state) and target_paths != ["self"]:
        return (
            f"this is one predictor's state (keys 'demos', 'signature'), not a program's: "
            f"load it into the predictor it came from, e.g. "
            f"program.{target_paths[0] if target_paths else '<predictor>'}.load_state(state)"
        )
    return None
