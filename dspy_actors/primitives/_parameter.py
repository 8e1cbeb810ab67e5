"""``Parameter``: the learnable parts of a program (a predictor's demos and instructions)."""

from __future__ import annotations

from typing import Any, Self

__all__ = ["Parameter", "StateError"]


class StateError(ValueError):
    """A saved state that does not fit the program it is loaded into."""


class Parameter:
    """A learnable unit. Subclasses say how to save, restore and reset what they learned."""

    def dump_state(self) -> dict[str, Any]:
        raise NotImplementedError

    def load_state(self, state: dict[str, Any]) -> Self:
        raise NotImplementedError

    def reset(self) -> None:
        """Forget what was learned (demos), keeping the configuration."""
        raise NotImplementedError
