"""``Module``: the base of every program: ``forward`` plus parameters, copies and state.

A module finds its parameters (predictors) by walking its attributes: sub-modules, and
lists, tuples and dicts of them. Calling a module runs ``forward`` with the module's own
usage meter active, so ``module.usage`` is the token usage of every LM call made beneath it.

Over 400 lines: ``Module`` is DSPy's one base class (call, batch, structure, copies, state,
save and load), kept as DSPy users know it; the helpers are in this package's other modules.
"""

from __future__ import annotations

import asyncio
import contextvars
import copy
import functools
import json
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Self

from dspy_actors._callbacks import reporting_module_call
from dspy_actors.lm._usage import Usage, UsageMeter, metering
from dspy_actors.primitives._call_history import ModuleHistory, start_recording, stop_recording
from dspy_actors.primitives._dspy_state import from_dspy_state, is_dspy_state
from dspy_actors.primitives._parameter import Parameter, StateError
from dspy_actors.primitives._positional_inputs import inputs_by_keyword
from dspy_actors.primitives._predictor import Predictor
from dspy_actors.primitives._state_file import read_json_file, state_of_payload

if TYPE_CHECKING:
    from dspy_actors.primitives.example import Example

__all__ = ["STATE_FORMAT", "BatchRunner", "Module", "register_batch_runner", "reject_lm_string"]

STATE_FORMAT = "dspy_actors.module_state"
_STATE_VERSION = 1
_METER_ATTR = "_usage_meter"
_HISTORY_ATTR = "_call_history"
_PER_INSTANCE = frozenset({_METER_ATTR, _HISTORY_ATTR})  # never walked, never copied
_meter_lock = threading.Lock()
_log = logging.getLogger("dspy_actors.module")

# The module whose forward its own __call__ is running: a forward entered while another
# module (or none) is the one being called was called directly (DSPy warns about that).
# One contextvar read per forward; super().forward(...) sees its own module, so is fine.
_entering: contextvars.ContextVar[Module | None] = contextvars.ContextVar(
    "dspy_actors_entering_forward", default=None
)


BatchRunner = Callable[..., Any]
"""``runner(module, examples, **options)``: what ``Module.batch`` hands its work to."""

# Set by dspy_actors.modules._parallel when it is imported (dspy_actors/__init__ does): the
# fan-out lives with Parallel in the modules built on this class, not beneath them.
_batch_runner: BatchRunner | None = None


def register_batch_runner(runner: BatchRunner) -> None:
    """Make ``runner`` the one ``Module.batch`` calls (``modules.parallel`` registers
    ``Parallel``'s)."""
    global _batch_runner
    _batch_runner = runner


def _warn_if_called_directly(forward: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(forward)
    def checked(self: Module, *args: Any, **kwargs: Any) -> Any:
        if _entering.get() is not self:
            _log.warning(
                "Calling module.forward(...) on %s directly is discouraged: call the module "
                "itself, module(...), so its usage, history and callbacks are recorded.",
                type(self).__name__,
            )
        return forward(self, *args, **kwargs)

    checked.__dspy_actors_checked__ = True  # type: ignore[attr-defined]
    return checked


class Module:
    """Base class of programs. Subclasses set up sub-modules in ``__init__`` and implement
    ``forward``; call the module (not ``forward``) so usage is metered."""

    # Attributes shared (not copied) by ``deepcopy()``: clients such as an LM hold
    # connections and locks, and a copy of a program should talk to the same LM.
    _share_on_copy: ClassVar[frozenset[str]] = frozenset()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        forward = cls.__dict__.get("forward")
        if callable(forward) and not getattr(forward, "__dspy_actors_checked__", False):
            cls.forward = _warn_if_called_directly(forward)  # type: ignore[method-assign]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement forward()")

    @inputs_by_keyword  # qa("...") for qa(question="..."): an error naming the inputs
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # Plain tokens rather than context managers: this runs on every module call.
        entering = _entering.set(self)
        recording = start_recording(self.history)
        try:
            with metering(self.usage_meter), reporting_module_call(self, args, kwargs) as report:
                report.outputs = self.forward(*args, **kwargs)
                return report.outputs
        finally:
            stop_recording(recording)
            _entering.reset(entering)

    # -- history ------------------------------------------------------------------------
    @property
    def history(self) -> ModuleHistory:
        """The LM calls made beneath this module, oldest first (each a dict with
        ``messages``, ``outputs``, ``usage``, ``model``...), as DSPy's ``module.history``."""
        found: ModuleHistory | None = self.__dict__.get(_HISTORY_ATTR)
        if found is None:
            found = self.__dict__.setdefault(_HISTORY_ATTR, ModuleHistory())
        return found

    def inspect_history(self, n: int = 1) -> str:
        """The last ``n`` LM calls beneath this module as readable text."""
        lines: list[str] = []
        for entry in list(self.history)[-n:] if n > 0 else []:
            lines.append(f"--- {entry.get('model')} ---")
            for message in entry.get("messages", []):
                content = message.get("content")
                shown = content if isinstance(content, str) else json.dumps(content)
                lines.append(f"[{message.get('role')}]\n{shown}")
            for i, output in enumerate(entry.get("outputs", [])):
                lines.append(f"[response{'' if i == 0 else f' {i + 1}'}]\n{output}")
        return "\n\n".join(lines)

    # -- asyncio ------------------------------------------------------------------------
    async def acall(self, *args: Any, **kwargs: Any) -> Any:
        """``await module.acall(...)``: ``aforward`` with the module's usage metered, as
        calling the module runs ``forward``. A module without an ``aforward`` of its own is
        called (``module(...)``) in asyncio's thread pool, so the event loop never blocks."""
        if type(self).aforward is Module.aforward:
            return await asyncio.to_thread(self, *args, **kwargs)
        # As __call__: this module's history, usage meter and callbacks see the call.
        entering = _entering.set(self)
        recording = start_recording(self.history)
        try:
            with metering(self.usage_meter), reporting_module_call(self, args, kwargs) as report:
                report.outputs = await self.aforward(*args, **kwargs)
                return report.outputs
        finally:
            stop_recording(recording)
            _entering.reset(entering)

    async def aforward(self, *args: Any, **kwargs: Any) -> Any:
        """The asyncio version of ``forward``. Predictors implement it without holding a
        thread (their LM calls are awaited); a composite may write its own, awaiting its
        sub-modules' ``acall``. This default calls the module in asyncio's thread pool
        (``asyncio.to_thread``: settings and meters carried over), at the cost of a
        thread per call in flight."""
        return await asyncio.to_thread(self, *args, **kwargs)

    def batch(
        self,
        examples: Sequence[Example],
        num_threads: int | None = None,
        max_errors: int | None = None,
        return_failed_examples: bool = False,
        provide_traceback: bool | None = None,
        disable_progress_bar: bool = False,
        timeout: float = 600.0,
        straggler_limit: int = 3,
    ) -> Any:
        """This module on each example's inputs, ``num_threads`` at a time (DSPy's
        ``Module.batch``, through :class:`~dspy_actors.modules._parallel.Parallel`): the
        results in order, None for a failed one; with ``return_failed_examples``,
        ``(results, failed_examples, exceptions)``. To run a served program over many
        inputs, ``handle.batch`` is the actor runtime's own (bounded, streaming) way."""
        if _batch_runner is None:
            raise RuntimeError(
                "Module.batch runs through dspy_actors.modules.Parallel, which is not "
                "loaded: import dspy_actors (or dspy_actors.modules) first"
            )
        return _batch_runner(
            self,
            examples,
            num_threads=num_threads,
            max_errors=max_errors,
            return_failed_examples=return_failed_examples,
            provide_traceback=provide_traceback,
            disable_progress_bar=disable_progress_bar,
            timeout=timeout,
            straggler_limit=straggler_limit,
        )

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

    def parameters(self) -> list[Parameter]:
        """Every parameter beneath this module (``named_parameters`` without the names)."""
        return [param for _, param in self.named_parameters()]

    def named_sub_modules(
        self, type_: type | None = None, skip_compiled: bool = False
    ) -> list[tuple[str, Module]]:
        """Every module beneath this one, breadth first, named as DSPy names them: itself
        as ``"self"``, then ``"self.qa"``, ``"self.steps[0]"``, ``"self.by_name[key]"``.
        ``type_`` keeps only instances of that class; ``skip_compiled`` does not look
        inside modules marked ``_compiled``."""
        wanted = Module if type_ is None else type_
        found: list[tuple[str, Module]] = []
        queue: list[tuple[str, Any]] = [("self", self)]
        seen = {id(self)}
        while queue:
            name, item = queue.pop(0)
            if isinstance(item, wanted) and isinstance(item, Module):
                found.append((name, item))
            if isinstance(item, Module):
                if skip_compiled and getattr(item, "_compiled", False):
                    continue
                children = [
                    (f"{name}.{k}", v) for k, v in vars(item).items() if k not in _PER_INSTANCE
                ]
            elif isinstance(item, list | tuple):
                children = [(f"{name}[{i}]", v) for i, v in enumerate(item)]
            elif isinstance(item, dict):
                children = [(f"{name}[{k}]", v) for k, v in item.items()]
            else:
                continue
            for child_name, child in children:
                if id(child) not in seen:
                    seen.add(id(child))
                    queue.append((child_name, child))
        return found

    def attribute_sub_modules(self) -> list[tuple[str, Module]]:
        """Every module beneath this one by attribute path (``"qa"``, ``"steps[0]"``,
        ``"by_name['key']"``; itself first as ``"self"``), depth first: the paths the actor
        runtime serves sub-modules at and that ``named_parameters`` uses."""
        seen: set[int] = {id(self)}
        return [("self", self)] + [(p, v) for p, v in self._walk(seen) if isinstance(v, Module)]

    def _walk(self, seen: set[int], prefix: str = "") -> Iterator[tuple[str, Any]]:
        for name, value in vars(self).items():
            if name in _PER_INSTANCE:
                continue
            yield from _walk_value(f"{prefix}{name}", value, seen)

    def named_predictors(self) -> list[tuple[str, Predictor]]:
        """Every predictor (``Predict``, and the ones built on it) beneath this module, by
        attribute path, as ``named_parameters`` names them."""
        return [(n, p) for n, p in self.named_parameters() if isinstance(p, Predictor)]

    def predictors(self) -> list[Predictor]:
        return [p for _, p in self.named_predictors()]

    def set_lm(self, lm: Any) -> None:
        """Use ``lm`` for every predictor of this program."""
        reject_lm_string(lm)
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
            if name in _PER_INSTANCE:
                continue  # a copy meters and records its own calls
            if name in self._share_on_copy:
                new.__dict__[name] = value
                continue
            try:
                new.__dict__[name] = copy.deepcopy(value, memo)
            except Exception:  # e.g. clients with locks or sockets: share them
                new.__dict__[name] = value
        return new

    def __getstate__(self) -> dict[str, Any]:
        # Pickled (for another process: a Ray worker), a module carries its program, not
        # this process's usage meter and call history, as deepcopy() leaves them out.
        return {k: v for k, v in vars(self).items() if k not in _PER_INSTANCE}

    def deepcopy(self) -> Self:
        """An independent copy: learned state copied, LM clients shared."""
        return copy.deepcopy(self)

    def reset_copy(self) -> Self:
        """A copy with every parameter reset (no demos); predictors keep their LM (DSPy's
        ``reset`` also drops it, which would leave an optimizer's copy with no LM)."""
        new = self.deepcopy()
        for _, param in new.named_parameters():
            kept = param.__dict__.get("lm")  # an optimizer's copy talks to the same LM
            param.reset()
            if kept is not None:
                param.__dict__["lm"] = kept
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
            from dspy_actors.primitives._state_errors import shape_hint  # error path only

            hint = shape_hint(state, type(self).__name__, list(params))
            if hint:
                parts.append(hint)
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

    def save(self, path: str | os.PathLike[str], save_program: bool = False) -> None:
        """Write the learned state to a JSON file (no pickle: loading never runs code).

        ``save_program=True`` saves the whole program instead (its module classes,
        signatures and state, as data) into the directory ``path``; read it back with
        :func:`dspy_actors.load`. Unlike DSPy's pickle, loading rebuilds the program from
        registered module classes and never executes code from the file."""
        _refuse_pickle(path, "save")
        if save_program:
            from dspy_actors.primitives._program_file import save_program as save_whole

            save_whole(self, path)
            return
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
        """Load state saved by ``save``, or a JSON state file saved by DSPy 3.x for the same
        program (``dspy_program.save("x.json")``: demos, instructions, field texts; see
        :mod:`dspy_actors.primitives._dspy_state`). Only JSON is read: nothing is executed."""
        _refuse_pickle(path, "load")
        if Path(path).is_dir():
            raise StateError(
                f"{str(path)!r} is a directory: a whole program saved with save_program=True "
                "loads with dspy_actors.load(path); DSPy's own save_program directory holds "
                "cloudpickle, which dspy_actors never loads (it can run code): save the state "
                "with DSPy as JSON (program.save('program.json')) and load that"
            )
        payload = read_json_file(path)
        meta = payload.get("__metadata__") if isinstance(payload, dict) else None
        if not isinstance(meta, dict) and is_dspy_state(payload):
            fields = {
                p: [(f.name, f.desc) for f in param.signature.fields.values()]
                for p, param in self.named_parameters()
                if hasattr(param, "signature")
            }
            state = from_dspy_state(payload, fields, f"{str(path)!r}")
            try:
                # The base method: a predictor's own load_state takes its bare state.
                return Module.load_state(self, state)
            except StateError as exc:
                raise StateError(f"{str(path)!r} (saved by DSPy): {exc}") from exc
        state = state_of_payload(
            payload, repr(str(path)), state_format=STATE_FORMAT, version=_STATE_VERSION
        )
        return self.load_state(state)

    def __repr__(self) -> str:
        inner = "\n".join(f"  {path} = {param!r}" for path, param in self.named_parameters())
        return f"{type(self).__name__}(\n{inner}\n)" if inner else f"{type(self).__name__}()"


def _refuse_pickle(path: str | os.PathLike[str], action: str) -> None:
    if Path(path).suffix.lower() in (".pkl", ".pickle"):
        raise StateError(
            f"cannot {action} {str(path)!r}: dspy_actors never reads or writes pickle (loading "
            "it can run any code); use a .json path (DSPy users: save the program's state "
            "with DSPy as JSON, program.save('program.json'), and load that here)"
        )


def reject_lm_string(lm: Any) -> None:
    """A clear error for an LM given as a model name (a common slip when porting)."""
    if isinstance(lm, str):
        raise ValueError(
            f"an LM must be an LM object, not the string {lm!r}: use "
            f"dspy_actors.LM({lm!r}) (e.g. configure(lm=dspy_actors.LM({lm!r})))"
        )


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
