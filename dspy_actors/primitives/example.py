"""``Example``: one data point, a dict-like record whose keys are split into inputs and labels."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

__all__ = ["Example"]


class Example:
    """A record of named values: ``Example(question="2+2?", answer="4").with_inputs("question")``.

    Access values as attributes or items. ``inputs()`` and ``labels()`` split the record by
    the keys given to ``with_inputs``. Keys starting with ``dspy_`` are bookkeeping and are
    left out of ``keys()``/``items()`` unless asked for.
    """

    __slots__ = ("_input_keys", "_store")

    def __init__(self, base: Mapping[str, Any] | Example | None = None, **kwargs: Any) -> None:
        store: dict[str, Any] = {}
        input_keys: frozenset[str] | None = None
        if isinstance(base, Example):
            store.update(base._store)
            input_keys = base._input_keys
        elif base is not None:
            store.update(base)
        store.update(kwargs)
        object.__setattr__(self, "_store", store)
        object.__setattr__(self, "_input_keys", input_keys)

    # -- attribute and item access ------------------------------------------------------
    def __getattr__(self, key: str) -> Any:
        if key.startswith("__") and key.endswith("__"):
            raise AttributeError(key)
        try:
            return self._store[key]
        except KeyError:
            raise AttributeError(f"{type(self).__name__} has no field {key!r}") from None

    def __setattr__(self, key: str, value: Any) -> None:
        if key in type(self).__slots__ or key.startswith("_"):
            object.__setattr__(self, key, value)
        else:
            self._store[key] = value

    def __getitem__(self, key: str) -> Any:
        return self._store[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._store[key] = value

    def __delitem__(self, key: str) -> None:
        del self._store[key]

    def __contains__(self, key: object) -> bool:
        return key in self._store

    def __len__(self) -> int:
        return len(self.keys())

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def get(self, key: str, default: Any = None) -> Any:
        return self._store.get(key, default)

    def keys(self, include_dspy: bool = False) -> list[str]:
        return [k for k in self._store if include_dspy or not k.startswith("dspy_")]

    def values(self, include_dspy: bool = False) -> list[Any]:
        return [self._store[k] for k in self.keys(include_dspy)]

    def items(self, include_dspy: bool = False) -> list[tuple[str, Any]]:
        return [(k, self._store[k]) for k in self.keys(include_dspy)]

    # -- inputs and labels --------------------------------------------------------------
    def with_inputs(self, *keys: str) -> Example:
        """A copy that treats ``keys`` as the inputs (everything else is a label)."""
        copy = self.copy()
        object.__setattr__(copy, "_input_keys", frozenset(keys))
        return copy

    @property
    def input_keys(self) -> frozenset[str] | None:
        keys: frozenset[str] | None = self._input_keys
        return keys

    def inputs(self) -> Example:
        """The input values only (requires ``with_inputs`` first)."""
        if self._input_keys is None:
            raise ValueError(
                "inputs() needs the input keys: call example.with_inputs('question', ...) first"
            )
        ex = Example({k: v for k, v in self._store.items() if k in self._input_keys})
        object.__setattr__(ex, "_input_keys", self._input_keys)
        return ex

    def labels(self) -> Example:
        """Everything that is not an input (requires ``with_inputs`` first)."""
        input_keys = self.inputs().keys()
        return Example({k: v for k, v in self._store.items() if k not in input_keys})

    # -- copies and conversions ---------------------------------------------------------
    def copy(self, **changes: Any) -> Example:
        new = type(self).__new__(type(self))
        object.__setattr__(new, "_store", {**self._store, **changes})
        object.__setattr__(new, "_input_keys", self._input_keys)
        for slot in getattr(type(self), "__slots__", ()):
            if slot not in ("_store", "_input_keys") and hasattr(self, slot):
                object.__setattr__(new, slot, getattr(self, slot))
        return new

    def without(self, *keys: str) -> Example:
        copy = self.copy()
        for k in keys:
            copy._store.pop(k, None)
        return copy

    def to_dict(self) -> dict[str, Any]:
        return dict(self._store)

    toDict = to_dict

    # -- comparison and display ---------------------------------------------------------
    def __eq__(self, other: object) -> bool:
        return isinstance(other, Example) and self._store == other._store

    def __hash__(self) -> int:
        return hash(tuple(sorted((k, repr(v)) for k, v in self._store.items())))

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self.items())
        inputs = f", input_keys={sorted(self._input_keys)}" if self._input_keys is not None else ""
        return f"{type(self).__name__}({shown}){inputs}"

    __str__ = __repr__
