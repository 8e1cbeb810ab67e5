"""``Prediction``: a module's output, with every completion when ``n > 1``."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from dspy_actors.primitives.example import Example

__all__ = ["Completions", "Prediction"]


class Completions:
    """Several completions of one call: ``completions[i]`` is a :class:`Prediction`,
    ``completions.answer`` the list of every completion's ``answer``."""

    __slots__ = ("_items",)

    def __init__(self, items: Sequence[Mapping[str, Any]]) -> None:
        self._items = [dict(i) for i in items]

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int) -> Prediction:
        return Prediction(self._items[index])

    def __iter__(self) -> Iterator[Prediction]:
        return (Prediction(i) for i in self._items)

    def __getattr__(self, key: str) -> list[Any]:
        if key.startswith("_"):
            raise AttributeError(key)
        if self._items and key in self._items[0]:
            return [i.get(key) for i in self._items]
        raise AttributeError(f"completions have no field {key!r}")

    def __repr__(self) -> str:
        return f"Completions({self._items!r})"


class Prediction(Example):
    """Output values by name (``pred.answer``). ``completions`` holds all ``n`` of them."""

    __slots__ = ("_completions",)

    def __init__(self, base: Mapping[str, Any] | Example | None = None, **kwargs: Any) -> None:
        super().__init__(base, **kwargs)
        object.__setattr__(self, "_completions", None)

    @classmethod
    def from_completions(cls, completions: Sequence[Mapping[str, Any]]) -> Prediction:
        """A prediction holding the first completion's values, and all of them."""
        if not completions:
            raise ValueError("a Prediction needs at least one completion")
        pred = cls(completions[0])
        object.__setattr__(pred, "_completions", Completions(completions))
        return pred

    @property
    def completions(self) -> Completions:
        comps: Completions | None = self._completions
        return comps if comps is not None else Completions([self.to_dict()])

    def with_inputs(self, *keys: str) -> Example:
        raise TypeError("a Prediction has no inputs; build an Example for that")

    def __repr__(self) -> str:
        shown = ",\n    ".join(f"{k}={v!r}" for k, v in self.items())
        extra = ""
        comps: Completions | None = self._completions
        if comps is not None and len(comps) > 1:
            extra = f"\n    ({len(comps) - 1} more completions)"
        return f"Prediction(\n    {shown}{extra}\n)"

    __str__ = __repr__

    # Numeric behaviour for metric results that return a Prediction with a ``score``.
    def __float__(self) -> float:
        if "score" not in self:
            raise TypeError("only a Prediction with a `score` converts to float")
        return float(self["score"])
