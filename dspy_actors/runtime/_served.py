"""What the app knows of each served program: ``ModuleProgram`` (``app.serve``) and
``PipelineProgram`` (``app.program``), both ``ServedProgram``s that handles read on every
call, and ``ProgramOptions``, the options both take.

Where the two kinds differ (their subtree, their usage, how an upgrade builds the next
version, which module names the inputs) is a method of each type, so no caller branches on
which kind it holds.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import supervisors
from dspy_actors.lm._usage import ZERO_USAGE, Usage, UsageMeter
from dspy_actors.primitives._parameter import StateError
from dspy_actors.primitives.module import Module
from dspy_actors.runtime._gate import CallGate
from dspy_actors.runtime._module_actor import ModuleServices
from dspy_actors.runtime._pipeline import PipelineStep
from dspy_actors.runtime._state_checks import check_upgrade
from dspy_actors.runtime._tree_build import (
    PROGRAM_INTENSITY,
    PROGRAM_PERIOD,
    TreeOptions,
    module_subtree,
)


@dataclass(frozen=True, slots=True)
class ProgramOptions:
    """How a program is served: the keyword options of ``app.serve``/``app.program``."""

    idempotent: bool = False
    timeout: float | None = None
    max_in_flight: int | None = None
    strategy: supervisors.Strategy = "one_for_one"
    intensity: int = PROGRAM_INTENSITY
    period: float = PROGRAM_PERIOD
    # None: an idempotent call rides out crashes until its deadline (at most
    # calls.REPEAT_LIMIT of them); a number caps them lower.
    max_crash_retries: int | None = None


@dataclass(eq=False, kw_only=True)
class ServedProgram:
    """The app's record of one served program; handles read it on every call."""

    name: str
    version: int
    # The current version's registry name prefix ("app/qa@v2/"): a module program's entry
    # actor is registered as it, a pipeline's steps as it + step id.
    entry_name: str
    child_id: str
    gate: CallGate
    idempotent: bool
    call_timeout: float
    options: TreeOptions
    # The store's version of the newest state (set when an upgrade begins: the new
    # version's actors load it) and of the state new calls reach (set at the switch).
    state_version: int | None = None
    served_state_version: int | None = None
    max_crash_retries: int | None = None
    stopped: bool = False
    # Versions an upgrade stopped (after draining them): a pipeline call still on one of
    # them fails at once instead of resending to a step that will never come back.
    retired: set[int] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Usage per module path ("qa", "qa.answer"): kept here, outside the actors, so that a
    # module's usage adds up across its restarts and the program's upgrades.
    meters: dict[str, UsageMeter] = field(default_factory=dict)
    # Its own lock: actors ask for their meter while an upgrade holds ``lock``.
    meters_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def steps(self) -> tuple[PipelineStep, ...]:
        """A pipeline's steps, in order, that a caller drives a call through (runtime/
        _pipeline.py); empty for a module program, whose entry actor takes the call."""
        return ()

    def meter_for(self, path: str) -> UsageMeter:
        """The usage meter of the module at ``path`` (made on first use)."""
        with self.meters_lock:
            meter = self.meters.get(path)
            if meter is None:
                meter = self.meters[path] = UsageMeter()
            return meter

    def usage(self) -> Usage:
        """What the program's calls have spent."""
        raise NotImplementedError

    def usage_by_module(self) -> dict[str, Usage]:
        """Usage of each module path served so far (a composite's includes its parts')."""
        with self.meters_lock:
            meters = dict(self.meters)
        return {path: meter.total for path, meter in sorted(meters.items())}

    def gone(self, version: int) -> str | None:
        """Why calls on ``version`` can no longer be served, or None while they can."""
        if self.stopped:
            return "the program was stopped"
        if version in self.retired:
            return f"its version {version} was stopped by an upgrade (drain timeout)"
        return None

    def entry_module(self) -> Module:
        """The module that takes the program's inputs (for errors naming them)."""
        raise NotImplementedError

    def subtree(
        self,
        child_id: str,
        prefix: str,
        services: ModuleServices,
        registry: supervisors.Registry,
        label: str,
    ) -> supervisors.ChildSpec:
        """The subtree of one version (``child_id``), its actors registered under
        ``prefix``, a supervisor of its own labelled ``label``."""
        raise NotImplementedError

    def next_version(self, state_or_module: Any) -> tuple[dict[str, Any], Callable[[], None]]:
        """The next version's learned state, built from ``state_or_module`` (checked
        first), and how to adopt its modules (for the next ``subtree``) once it is saved."""
        raise NotImplementedError


@dataclass(eq=False, kw_only=True)
class ModuleProgram(ServedProgram):
    """A Module served as a subtree mirroring its composition (``app.serve``)."""

    template: Module

    def usage(self) -> Usage:
        """Its root module's usage (which includes its sub-modules')."""
        return self.meter_for(self.name).total

    def entry_module(self) -> Module:
        return self.template

    def subtree(
        self,
        child_id: str,
        prefix: str,
        services: ModuleServices,
        registry: supervisors.Registry,
        label: str,
    ) -> supervisors.ChildSpec:
        return module_subtree(
            child_id, "", self.template, prefix, services, self.options, self.name
        )

    def next_version(self, state_or_module: Any) -> tuple[dict[str, Any], Callable[[], None]]:
        check_upgrade(self.name, "module", state_or_module)
        if isinstance(state_or_module, Module):
            template = state_or_module.deepcopy()
        else:
            template = self.template.deepcopy()
            Module.load_state(template, dict(state_or_module))
        return program_state(template), partial(setattr, self, "template", template)


@dataclass(eq=False, kw_only=True)
class PipelineProgram(ServedProgram):
    """Steps served side by side, a call driven through them by its caller
    (``app.program``). Upgrades change the steps' state, never the steps."""

    template: list[tuple[str, Module]]
    pipeline_steps: tuple[PipelineStep, ...]

    @property
    def steps(self) -> tuple[PipelineStep, ...]:
        return self.pipeline_steps

    def usage(self) -> Usage:
        """The sum of its steps' usage."""
        total = ZERO_USAGE
        for step_id, _module in self.template:
            total = total + self.meter_for(f"{self.name}.{step_id}").total
        return total

    def entry_module(self) -> Module:
        return self.template[0][1]

    def subtree(
        self,
        child_id: str,
        prefix: str,
        services: ModuleServices,
        registry: supervisors.Registry,
        label: str,
    ) -> supervisors.ChildSpec:
        # Its steps only (registered as prefix + step id); callers drive calls through them.
        children = [
            module_subtree(sid, sid, module, prefix, services, self.options, self.name)
            for sid, module in self.template
        ]
        return supervisors.Supervisor.child_spec(
            child_id,
            children,
            strategy=self.options.strategy,
            intensity=self.options.intensity,
            period=self.options.period,
            registry=registry,
            label=label,
        )

    def next_version(self, state_or_module: Any) -> tuple[dict[str, Any], Callable[[], None]]:
        check_upgrade(self.name, "pipeline", state_or_module)
        if not isinstance(state_or_module, Mapping):
            raise TypeError("a pipeline is upgraded with a state dict")
        steps = []
        for sid, module in self.template:
            copy_ = module.deepcopy()
            part = substate(state_or_module, sid)
            if part is not None:
                try:
                    Module.load_state(copy_, part)
                except StateError as exc:
                    raise StateError(
                        f"step {sid!r} of {self.name!r}: {exc}. A pipeline's "
                        "state is keyed by step and predictor path, e.g. "
                        f"{{'{sid}.<path>': ...}} (or {{'{sid}': ...}} for a "
                        "step that is itself a predictor); steps left out keep theirs"
                    ) from exc
            steps.append((sid, copy_))
        return dict(state_or_module), partial(setattr, self, "template", steps)


def program_state(module: Module) -> dict[str, Any]:
    """A program's learned state keyed by parameter path ("self" for a predictor served
    on its own): the base Module form, whatever a subclass's own dump_state returns."""
    return Module.dump_state(module)


def substate(state: Mapping[str, Any] | None, path: str) -> dict[str, Any] | None:
    """The part of a program's state (keys are parameter paths) that belongs at ``path``."""
    if state is None:
        return None
    if not path:
        return dict(state)
    found: dict[str, Any] = {}
    for key, value in state.items():
        if key == path:
            found["self"] = value
        elif key.startswith(path + ".") or key.startswith(path + "["):
            rest = key[len(path) :]
            found[rest[1:] if rest.startswith(".") else rest] = value
    return found or None
