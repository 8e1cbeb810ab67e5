"""``Module``: the base of every program: ``forward`` plus parameters, copies and state.

A module finds its parameters (predictors) by walking its attributes: sub-modules, and
lists, tuples and dicts of them. Calling a module runs ``forward`` with the module's own
usage meter active, so ``module.usage`` is the token usage of every LM call made beneath it.
"""

from __future__ import annotations

import copy
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Self

from dspy_actors.lm.usage import Usage, UsageMeter, metering
from dspy_actors.primitives.parameter import Parameter, StateError
from dspy_actors.primitives.state_file import read_state_file

if TYPE_CHECKING:
    from dspy_actors.modules.predict import Predict

__all__ = ["STATE_FORMAT", "Module"]

STATE_FORMAT = "dspy_actors.module_state"
_STATE_VERSION = 1
_METER_ATTR = "_usage_meter"
_meter_lock = threading.Lock()


class Module:
    """Base class of programs. Subclasses set up sub-modules in ``__init__`` and implement
    ``forward``; call the module (not ``forward``) so usage is metered."""

    # Attributes shared (not copied) by ``deepcopy()``: clients such as an LM hold
    # connections and locks, and a copy of a program should talk to the same LM.
    _share_on_copy: ClassVar[frozenset[str]] = frozenset()

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement forward()")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with metering(self.usage_meter):
            return self.forward(*args, **kwargs)

    # -- usage --------------------------------------------------------------------------
    @property
    def usage_meter(self) -> UsageMeter:
        """This module's meter (created on first use: subclasses need not call super())."""
        meter: UsageMeter | None = self.__dict__.get(_METER_ATTR)
        if meter is None:
            with _meter_lock:
                meter = self.__dict__.get(_METER_ATTR)
                if meter is None:
                    meter = UsageMeter()
                    self.__dict__[_METER_ATTR] = meter
        return meter

    @usage_meter.setter
    def usage_meter(self, meter: UsageMeter) -> None:
        """Count this module's usage in ``meter`` from now on (the actor runtime gives each
        served module a meter that outlives the module's restarts and upgrades)."""
        self.__dict__[_METER_ATTR] = meter

    @property
    def usage(self) -> Usage:
        """Token usage of every LM call made while this module was running."""
        return self.usage_meter.total

    # -- structure ----------------------------------------------------------------------
    def named_parameters(self) -> list[tuple[str, Parameter]]:
        """Every parameter beneath this module, by attribute path (``"qa.predict"``,
        ``"steps[0]"``); ``"self"`` if the module itself is one."""
        found: list[tuple[str, Parameter]] = []
        seen: set[int] = set()
        if isinstance(self, Parameter):
            found.append(("self", self))
            seen.add(id(self))
        for path, value in self._walk(seen):
            if isinstance(value, Parameter):
                found.append((path, value))
        return found

    def named_sub_modules(self) -> list[tuple[str, Module]]:
        """Every module beneath this one (itself first, as ``"self"``)."""
        seen: set[int] = {id(self)}
        return [("self", self)] + [(p, v) for p, v in self._walk(seen) if isinstance(v, Module)]

    def _walk(self, seen: set[int], prefix: str = "") -> Iterator[tuple[str, Any]]:
        for name, value in vars(self).items():
            if name == _METER_ATTR:
                continue
            yield from _walk_value(f"{prefix}{name}", value, seen)

    def named_predictors(self) -> list[tuple[str, Predict]]:
        from dspy_actors.modules.predict import Predict

        return [(n, p) for n, p in self.named_parameters() if isinstance(p, Predict)]

    def predictors(self) -> list[Predict]:
        return [p for _, p in self.named_predictors()]

    def set_lm(self, lm: Any) -> None:
        """Use ``lm`` for every predictor of this program."""
        for p in self.predictors():
            p.lm = lm

    def get_lm(self) -> Any:
        """The LM all predictors use; an error if they use different ones."""
        lms = {id(p.lm): p.lm for p in self.predictors()}
        if len(lms) > 1:
            raise ValueError("predictors of this program use different LMs")
        return next(iter(lms.values()), None)

    # -- copies -------------------------------------------------------------------------
    def __deepcopy__(self, memo: dict[int, Any]) -> Self:
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        for name, value in vars(self).items():
            if name == _METER_ATTR:
                continue  # a copy meters its own calls
            if name in self._share_on_copy:
                new.__dict__[name] = value
                continue
            try:
                new.__dict__[name] = copy.deepcopy(value, memo)
            except Exception:  # e.g. clients with locks or sockets: share them
                new.__dict__[name] = value
        return new

    def deepcopy(self) -> Self:
        """An independent copy: learned state copied, LM clients shared."""
        return copy.deepcopy(self)

    def reset_copy(self) -> Self:
        """A copy with every parameter reset (no demos)."""
        new = self.deepcopy()
        for _, param in new.named_parameters():
            param.reset()
        return new

    # -- state --------------------------------------------------------------------------
    def dump_state(self) -> dict[str, Any]:
        """Learned state as JSON-compatible data, one entry per parameter path. Never
        contains an LM client or key (at most the model name)."""
        return {path: param.dump_state() for path, param in self.named_parameters()}

    def load_state(self, state: dict[str, Any]) -> Self:
        """Restore what ``dump_state`` produced; the parameter paths must match exactly."""
        if not isinstance(state, dict):
            raise StateError(f"a module state is a dict, not {type(state).__name__}")
        params = dict(self.named_parameters())
        missing = [p for p in params if p not in state]
        unexpected = [p for p in state if p not in params]
        if missing or unexpected:
            parts = []
            if missing:
                parts.append(f"no state for predictor(s) {missing}")
            if unexpected:
                parts.append(f"state for unknown predictor(s) {unexpected}")
            raise StateError(
                f"state does not match {type(self).__name__}: {'; '.join(parts)} "
                f"(the program has {list(params)})"
            )
        for path, param in params.items():
            try:
                param.load_state(state[path])
            except StateError as exc:
                raise StateError(f"predictor {path!r}: {exc}") from exc
        return self

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the learned state to a JSON file (no pickle: loading never runs code)."""
        payload = {
            "__metadata__": {
                "format": STATE_FORMAT,
                "version": _STATE_VERSION,
                "program": type(self).__name__,
            },
            "state": self.dump_state(),
        }
        target = Path(path)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text(json.dumps(payload, indent=2, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, target)  # atomic: a crash never leaves a half-written file

    def load(self, path: str | os.PathLike[str]) -> Self:
        """Load state saved by ``save`` into this program (StateError if the file is not
        one, or was saved from a program of another structure)."""
        state = read_state_file(path, state_format=STATE_FORMAT, version=_STATE_VERSION)
        return self.load_state(state)

    def __repr__(self) -> str:
        inner = "\n".join(f"  {path} = {param!r}" for path, param in self.named_parameters())
        return f"{type(self).__name__}(\n{inner}\n)" if inner else f"{type(self).__name__}()"


def _walk_value(path: str, value: Any, seen: set[int]) -> Iterator[tuple[str, Any]]:
    if isinstance(value, Module | Parameter):
        if id(value) in seen:
            return
        seen.add(id(value))
        yield path, value
        if isinstance(value, Module):
            yield from value._walk(seen, prefix=f"{path}.")
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            yield from _walk_value(f"{path}[{i}]", item, seen)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _walk_value(f"{path}[{key!r}]", item, seen)
