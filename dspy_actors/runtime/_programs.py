"""Programs: the app's served programs, from ``serve``/``program`` to blue/green upgrades.

It owns the record of each program (runtime/_served.py) and starts each version's subtree
under the app's ``modules`` supervisor; it reaches the rest of the app only through what it
is given (the stores, the current LM dispatcher, the ``modules`` supervisor, how to
publish events), never through ``App``.

With a shared PostgreSQL store it also follows the states other replicas save: when one
replica upgrades a program, the others upgrade theirs to that saved version (``follow_saved``),
and a program is served from its module's own state while the database is down.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import supervisors
from dspy_actors import redaction
from dspy_actors.primitives._parameter import StateError
from dspy_actors.primitives.module import Module
from dspy_actors.runtime._call_stats import CallStats
from dspy_actors.runtime._events import Event
from dspy_actors.runtime._gate import CallGate
from dspy_actors.runtime._lm_pool import Dispatcher
from dspy_actors.runtime._module_actor import ModuleServices
from dspy_actors.runtime._parameter_store import StoreError
from dspy_actors.runtime._pipeline import PipelineStep
from dspy_actors.runtime._served import (
    ModuleProgram,
    PipelineProgram,
    ProgramOptions,
    ServedProgram,
    program_state,
    substate,
)
from dspy_actors.runtime._stores import Stores
from dspy_actors.runtime._tree_build import TreeOptions, accepted_inputs, instantiate_step

_log = redaction.get_logger("dspy_actors.runtime")

# Restart delays of a whole program subtree under ``modules``: 10 ms doubling to 2 s.
_PROGRAM_BACKOFF = supervisors.Backoff(min_delay=0.01, max_delay=2.0, jitter=0.1)


@dataclass(frozen=True, slots=True)
class ProgramLimits:
    """The app-wide defaults a program's options fall back on."""

    call_timeout: float
    max_in_flight: int
    module_max_in_flight: int


class Programs:
    """The served programs of one app, by name."""

    def __init__(
        self,
        app_name: str,
        registry: supervisors.Registry,
        limits: ProgramLimits,
        stores: Stores,
        modules: Callable[[], supervisors.DynamicSupervisor],
        dispatcher: Callable[[], Dispatcher],
        publisher: Callable[[str | None], Callable[[Event], None] | None],
        call_stats: CallStats | None = None,
    ) -> None:
        self.app_name = app_name
        self.registry = registry
        self.limits = limits
        self.stores = stores
        self._modules = modules
        self._dispatcher = dispatcher
        self._publisher = publisher
        self.call_stats = call_stats if call_stats is not None else CallStats()
        self._programs: dict[str, ServedProgram] = {}
        self._lock = threading.Lock()

    # Serving. ----------------------------------------------------------------------------

    def serve_module(
        self, name: str, module: Module, options: ProgramOptions, *, load_saved_state: bool
    ) -> ModuleProgram:
        """Serve ``module`` as ``name`` (see ``App.serve``)."""
        given: object = module  # typed Module, but callers pass anything
        if not isinstance(given, Module):
            got = (
                f"the class {given.__name__}: pass an instance, {given.__name__}(...)"
                if isinstance(given, type)
                else type(given).__name__
            )
            raise TypeError(f"app.serve({name!r}, ...) needs a Module, got {got}")
        self._check_free(name)  # before loading state: a clash is about the name
        template = module.deepcopy()
        params = self.stores.parameters()
        try:
            saved = params.load(name) if load_saved_state else None
        except StoreError as error:
            if not self.stores.shared:
                raise
            # A shared database down: serve this module's own state now; the replica
            # listener brings the program to the latest saved state once it is back.
            _log.warning("store.unavailable", program=name, error=str(error), action="served")
            program = ModuleProgram(template=template, **self._record_fields(name, options))
            self._launch(program)
            return program
        if saved is not None:
            try:
                Module.load_state(template, saved)
            except StateError as error:
                # State saved by another program under this name: reported, never loaded.
                raise StateError(
                    f"app.serve({name!r}, ...): the state saved for {name!r} in "
                    f"{self.stores.where!r} was saved from a different program "
                    f"({error}); serve it under another name, or pass "
                    "load_saved_state=False to start from this module's own state"
                ) from None
            state_version = params.latest_version(name)
        else:
            state_version = params.save(name, program_state(template))
        program = ModuleProgram(template=template, **self._record_fields(name, options))
        program.state_version = program.served_state_version = state_version
        self._launch(program)
        return program

    def serve_pipeline(
        self, name: str, steps: Sequence[Sequence[Any]], options: ProgramOptions
    ) -> PipelineProgram:
        """Serve ``steps`` as the pipeline ``name`` (see ``App.program``)."""
        if not steps:
            raise ValueError(f"app.program({name!r}, ...) needs at least one step")
        built = [instantiate_step(step) for step in steps]
        ids = [sid for sid, _ in built]
        if len(set(ids)) != len(ids):
            raise ValueError(f"app.program({name!r}, ...): duplicate step ids in {ids}")
        program = PipelineProgram(
            template=built,
            pipeline_steps=tuple(PipelineStep(sid, accepted_inputs(m)) for sid, m in built),
            **self._record_fields(name, options),
        )
        self._launch(program)
        return program

    def _check_free(self, name: str) -> None:
        with self._lock:
            if name in self._programs:
                raise ValueError(f"a program named {name!r} is already served")

    def _record_fields(self, name: str, options: ProgramOptions) -> dict[str, Any]:
        """The fields every program record has, from its name and options (checked)."""
        if not name or "/" in name or "@" in name:
            raise ValueError(f"a program name is non-empty, without '/' or '@': {name!r}")
        self._check_free(name)
        limits = self.limits
        call_timeout = limits.call_timeout if options.timeout is None else options.timeout
        if options.max_crash_retries is not None and options.max_crash_retries < 0:
            raise ValueError(f"max_crash_retries must be >= 0, got {options.max_crash_retries!r}")
        return {
            "name": name,
            "version": 1,
            "entry_name": "",
            "child_id": "",
            "gate": CallGate(options.max_in_flight or limits.max_in_flight),
            "idempotent": options.idempotent,
            "call_timeout": call_timeout,
            "options": TreeOptions(
                strategy=options.strategy,
                intensity=options.intensity,
                period=options.period,
                max_in_flight=limits.module_max_in_flight,
                call_timeout=call_timeout,
            ),
            "max_crash_retries": options.max_crash_retries,
        }

    def _launch(self, program: ServedProgram) -> None:
        spec = self._program_spec(program, program.version)
        self._modules().start_child(spec)
        program.child_id = spec.id
        program.entry_name = f"{self.app_name}/{spec.id}/"
        with self._lock:
            self._programs[program.name] = program

    def _program_spec(self, program: ServedProgram, version: int) -> supervisors.ChildSpec:
        """The program's subtree as a child of ``modules``. Its restarts back off, so a
        program that cannot start again retries slowly instead of exhausting the
        ``modules`` supervisor's intensity and taking the other programs down with it."""
        child_id = f"{program.name}@v{version}"
        services = ModuleServices(
            registry=self.registry,
            dispatcher=self._dispatcher(),
            load_state=partial(self._load_state, program.name, program.state_version),
            publisher=self._publisher,
            call_stats=self.call_stats,
            meter_for=program.meter_for,
            gone=partial(program.gone, version),
        )
        spec = program.subtree(
            child_id,
            f"{self.app_name}/{child_id}/",
            services,
            self.registry,
            label=f"{self.app_name}/{child_id}",
        )
        return dataclasses.replace(spec, backoff=_PROGRAM_BACKOFF)

    def _load_state(self, program: str, version: int | None, path: str) -> dict[str, Any] | None:
        params = self.stores.params
        if version is None or params is None:
            return None
        try:
            return substate(params.load(program, version), path)
        except StoreError:
            if not self.stores.shared:
                raise
            return None  # a shared database down: the template holds this version's state

    # Lookup. -----------------------------------------------------------------------------

    def get(self, name: str) -> ServedProgram:
        """The program served as ``name`` (KeyError with the names served if none)."""
        with self._lock:
            program = self._programs.get(name)
            if program is None:
                raise KeyError(f"no program named {name!r}; served: {sorted(self._programs)}")
            return program

    # Changes. ----------------------------------------------------------------------------

    def upgrade(
        self,
        program: ServedProgram,
        state_or_module: Any,
        drain_timeout: float,
        *,
        saved_version: int | None = None,
    ) -> int:
        """Blue/green: start the new version beside the old, switch new calls to it, let the
        old version's calls in flight finish (up to ``drain_timeout``), then stop the old
        version. Returns the new version number. ``saved_version``: the state is that
        version, already in the store (saved by another replica), so it is not saved again."""
        with program.lock:
            if saved_version is not None and saved_version <= (program.state_version or 0):
                return program.version  # this replica is there already
            state, adopt = program.next_version(state_or_module)
            program.state_version = (
                self.stores.parameters().save(program.name, state)
                if saved_version is None
                else saved_version
            )
            old_version, old_child = program.version, program.child_id
            adopt()
            new_version = old_version + 1
            spec = self._program_spec(program, new_version)
            self._modules().start_child(spec)
            # The switch: from here on, calls resolve the new entry.
            program.entry_name = f"{self.app_name}/{spec.id}/"
            program.child_id = spec.id
            program.version = new_version
            program.served_state_version = program.state_version
            program.gate.wait_drained(old_version, drain_timeout)
            program.retired.add(old_version)
            self._modules().terminate_child(old_child)
            return new_version

    def follow_saved(self, name: str | None, drain_timeout: float = 60.0) -> None:
        """Another replica saved a state of ``name`` (None: of any program): upgrade each
        such program here to the latest saved version if it is newer (on the listener's
        thread; its calls in flight drain first, as in a local upgrade)."""
        with self._lock:
            programs = [p for p in self._programs.values() if name in (None, p.name)]
        for program in programs:
            self._follow(program, drain_timeout)

    def _follow(self, program: ServedProgram, drain_timeout: float) -> bool:
        if program.stopped:
            return False
        store = self.stores.parameters()
        latest = store.latest_version(program.name)
        if latest is None or latest <= (program.state_version or 0):
            return False
        state = store.load(program.name, latest)
        if state is None:
            return False  # deleted in the meantime
        version = self.upgrade(program, state, drain_timeout, saved_version=latest)
        _log.info("program.followed", program=program.name, state_version=latest, version=version)
        return True

    def stop(self, name: str) -> None:
        """Stop serving ``name`` (KeyError if it is not served)."""
        with self._lock:
            program = self._programs.pop(name, None)
        if program is None:
            raise KeyError(f"no program named {name!r}")
        program.stopped = True
        self._modules().terminate_child(program.child_id)

    def served(self) -> list[ServedProgram]:
        """The programs being served now (not stopped), for views such as the console."""
        with self._lock:
            return [p for p in self._programs.values() if not p.stopped]

    def find(self, name: str) -> ServedProgram | None:
        """The program served as ``name``, or None (unlike :meth:`get`, never raises)."""
        with self._lock:
            return self._programs.get(name)

    def stop_all(self) -> None:
        """Mark every program stopped (the app is stopping): calls fail at once."""
        with self._lock:
            for program in self._programs.values():
                program.stopped = True

    def relaunch(self) -> None:
        """Serve every program again (its current version) under a fresh ``modules``."""
        with self._lock:
            programs = [p for p in self._programs.values() if not p.stopped]
        for program in programs:
            with program.lock:
                try:
                    self._modules().start_child(self._program_spec(program, program.version))
                except supervisors.AlreadyStarted:
                    continue
                except supervisors.SupervisorError as error:
                    _log.error("program_relaunch_failed", program=program.name, error=repr(error))
