"""The application: ``dsa.start(...)`` builds the supervision tree and serves programs.

    root (one_for_one)
    ├── store      parameter store + dead letters (SQLite): opened on start, closed on stop
    ├── events     event bus (publish/subscribe by topic)
    ├── lm         rest_for_one: the LM router, then its pool of workers
    ├── modules    DynamicSupervisor: one subtree per served program (per version)
    └── runs       DynamicSupervisor: evaluation and optimization runs

Children start in that order (each one's dependencies first) and stop in reverse.
"""

from __future__ import annotations

import atexit
import collections
import dataclasses
import itertools
import shutil
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Self

import platformdirs

import supervisors
from dspy_actors import redaction, settings
from dspy_actors._stop_hooks import run_stop_hooks
from dspy_actors.lm.breaker import CircuitBreaker
from dspy_actors.lm.rate_limit import RateLimiter
from dspy_actors.lm.usage import ZERO_USAGE, Usage, UsageMeter
from dspy_actors.primitives.module import Module
from dspy_actors.primitives.parameter import StateError
from dspy_actors.runtime import events as ev
from dspy_actors.runtime.dead_letters import DeadLetter, DeadLetterStore
from dspy_actors.runtime.errors import AppStopped, ModuleCrashed
from dspy_actors.runtime.handle import ProgramHandle, _Gate
from dspy_actors.runtime.lm_loop import LMLoop
from dspy_actors.runtime.lm_pool import (
    Dispatcher,
    LMPoolConfig,
    LMRouter,
    LMWorker,
    PooledLM,
    deployment_key,
)
from dspy_actors.runtime.lm_process import LMProcess
from dspy_actors.runtime.module_actor import ModuleServices
from dspy_actors.runtime.parameter_store import ParameterStore
from dspy_actors.runtime.pipeline import PipelineStep
from dspy_actors.runtime.poison import PoisonTracker, fingerprint
from dspy_actors.runtime.state_checks import check_upgrade
from dspy_actors.runtime.tools import TOOL_LETTER_PREFIX, served_tool_runner
from dspy_actors.runtime.tree_build import (
    TreeOptions,
    accepted_inputs,
    instantiate_step,
    module_subtree,
)

if TYPE_CHECKING:
    from dspy_actors.lm.lm import LM

_app_ids = itertools.count(1)
supervisors_log = redaction.get_logger("dspy_actors.runtime")
# Secrets never reach a log through the runtime's dependencies either (see redaction).
redaction.install()

# How long an LM worker process may take to start before its start counts as failed.
_PROCESS_START_SECONDS = 75.0  # beyond the process's own 60 s readiness wait

# Restart delays of a whole program subtree under ``modules``: 10 ms doubling to 2 s.
_PROGRAM_BACKOFF = supervisors.Backoff(min_delay=0.01, max_delay=2.0, jitter=0.1)


@dataclass(eq=False)
class ServedProgram:
    """The app's record of one served program; handles read it on every call."""

    name: str
    kind: str  # "module" | "pipeline"
    version: int
    # The current version's registry name prefix ("app/qa@v2/"): the entry actor of a
    # "module" program is registered as it, the steps of a "pipeline" as it + step id.
    entry_name: str
    child_id: str
    gate: _Gate
    idempotent: bool
    call_timeout: float
    options: TreeOptions
    template: Any  # the Module (kind "module") or the list of (step id, Module)
    # A pipeline's steps, in order (empty for kind "module"): the caller drives a call
    # through them (runtime/pipeline.py). Upgrades change their state, never the steps.
    steps: tuple[PipelineStep, ...] = ()
    state_version: int | None = None
    max_crash_retries: int = 3
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

    def meter_for(self, path: str) -> UsageMeter:
        """The usage meter of the module at ``path`` (made on first use)."""
        with self.meters_lock:
            meter = self.meters.get(path)
            if meter is None:
                meter = self.meters[path] = UsageMeter()
            return meter

    def usage(self) -> Usage:
        """What the program's calls have spent: its root module's usage (which includes
        its sub-modules'), or the sum of a pipeline's steps."""
        if self.kind == "module":
            return self.meter_for(self.name).total
        total = ZERO_USAGE
        for step_id, _module in self.template:
            total = total + self.meter_for(f"{self.name}.{step_id}").total
        return total

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


class _Stores:
    """The app's SQLite stores; reopened by the ``store`` actor when it restarts."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.params: ParameterStore | None = None
        self.dead_letters: DeadLetterStore | None = None

    def open(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.params = ParameterStore(self.data_dir / "parameters.sqlite3")
        self.dead_letters = DeadLetterStore(self.data_dir / "dead_letters.sqlite3")

    def close(self) -> None:
        for store in (self.params, self.dead_letters):
            if store is not None:
                store.close()


class StoreOwner(supervisors.SupervisedActor):
    """The ``store`` node: owns the stores' lifetime (they are thread-safe objects)."""

    def __init__(self, stores: _Stores) -> None:
        super().__init__()
        self.stores = stores

    def on_start(self) -> None:
        self.stores.open()

    def on_stop(self) -> None:
        self.stores.close()

    def on_failure(self, *_exc: object) -> None:
        self.stores.close()


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


@dataclass(frozen=True, slots=True)
class AppConfig:
    """Settings of an app; see :func:`start` for what each means."""

    name: str
    data_dir: Path
    lm: LM | None
    fallbacks: tuple[LM, ...]
    lm_workers: int
    lm_max_queue: int
    lm_processes: int
    breaker: Mapping[str, Any]
    rate_limit: Mapping[str, Any] | None
    max_in_flight: int
    module_max_in_flight: int
    poison_threshold: int
    call_timeout: float
    submit_threads: int
    log: Literal["json", "console"] | None
    on_exit: Callable[[supervisors.ExitReason], None] | None = None
    root_intensity: int = 3
    root_period: float = 5.0
    self_restarts: int = 0
    # A temporary directory of this app alone (no explicit name or data_dir): removed on stop.
    private_data_dir: bool = False
    lm_max_in_flight: int = 4096
    lm_loops: int = 1


class App:
    """A running application tree. Create it with :func:`dspy_actors.start`."""

    def __init__(self, config: AppConfig) -> None:
        self.config = config
        self.name = config.name
        self.lm = config.lm
        self.registry = supervisors.Registry()
        self.poison = PoisonTracker(config.poison_threshold)
        self.stores = _Stores(config.data_dir)
        self.events = ev.EventBus(name=f"{self.name}/events", registry=self.registry)
        self.router_name = f"{self.name}/lm/router"
        self.executor = ThreadPoolExecutor(
            max_workers=config.submit_threads, thread_name_prefix=f"{self.name}-submit"
        )
        self._programs: dict[str, ServedProgram] = {}
        self._programs_lock = threading.Lock()
        # Served agents' tool calls: events and quarantine to dead letters (runtime/tools.py).
        self.tools = served_tool_runner(
            self.events.publish,
            lambda: bool(self.events.subscriptions()),
            lambda: self.stores.dead_letters,
            thread_name_prefix=f"{self.name}-tool",
        )
        # Set once the root's exit was reported (and the on_exit callback has returned).
        self._exit_reported = threading.Event()
        self._unsubscribe_supervision: Any = None
        # Why the app can no longer serve calls (None while it can): stop() or its tree's
        # exit, with the crash reasons that led there. Calls fail at once with it.
        self._stopped_because: str | None = None
        self._stopping = False
        self._self_restarts_left = config.self_restarts
        self._lifecycle_lock = threading.Lock()
        # The last crash reasons of the root's children: what an exited app reports.
        self._recent_crashes: collections.deque[str] = collections.deque(maxlen=5)
        self._restarter: threading.Thread | None = None
        if config.log is not None:
            self.events.subscribe("*", ev.structlog_subscriber(renderer=config.log))
        self._unsubscribe_supervision = supervisors.subscribe(self._supervision_event)
        try:
            self.root = self._start_root()
        except BaseException:
            # Nothing of a tree that failed to start may outlive it: no subscription, no
            # threads, and no exit hook for an app that never ran.
            self._unsubscribe_supervision()
            self._unsubscribe_supervision = None
            self.executor.shutdown(wait=False, cancel_futures=True)
            self.tools.join(1.0)
            raise
        # Stopped at interpreter exit if the host never called stop(), as an OTP node stops
        # its applications on shutdown: stores closed, worker processes ended, in order.
        # Weakly: registering must not keep an abandoned app alive. Only once the tree runs.
        self._stop_at_exit = partial(_stop_if_alive, weakref.ref(self))
        atexit.register(self._stop_at_exit)

    def _start_root(self) -> supervisors.Supervisor:
        return supervisors.Supervisor.start(
            [
                supervisors.ChildSpec("store", StoreOwner, args=(self.stores,), shutdown=10.0),
                self.events.child_spec("events"),
                self._lm_spec(),
                supervisors.DynamicSupervisor.child_spec(
                    "modules",
                    intensity=1000,
                    period=5.0,
                    registry=self.registry,
                    label=f"{self.name}/modules",
                ),
                supervisors.DynamicSupervisor.child_spec(
                    "runs", registry=self.registry, label=f"{self.name}/runs"
                ),
            ],
            name=self.name,
            intensity=self.config.root_intensity,
            period=self.config.root_period,
            registry=self.registry,
            on_exit=self._root_exited,
        )

    @property
    def stopped_because(self) -> str | None:
        """Why the app no longer serves calls (``app.stop()``, or its tree's exit with the
        crash reasons), or None while it runs."""
        return self._stopped_because

    def raise_if_stopped(self, program: str) -> None:
        """Raise :class:`AppStopped` if the app can no longer serve calls (called by
        handles before each attempt, so that a call never waits on a tree that is gone)."""
        why = self._stopped_because
        if why is not None:
            raise AppStopped(self.name, program, why)

    def _root_exited(self, reason: supervisors.ExitReason) -> None:
        with self._lifecycle_lock:
            restart = reason.abnormal and not self._stopping and self._self_restarts_left > 0
            if restart:
                self._self_restarts_left -= 1
            elif self._stopped_because is None:
                self._stopped_because = self._exit_text(reason)
        if restart:
            # As OTP's heart restarts a node whose tree died: a fresh tree, the programs
            # served again. Not from this thread: it is the old root's monitor.
            supervisors_log.error(
                "app_restarting",
                app=self.name,
                reason=str(reason),
                restarts_left=self._self_restarts_left,
            )
            self._restarter = threading.Thread(
                target=self._restart_tree, name=f"{self.name}-self-restart", daemon=True
            )
            self._restarter.start()
            return
        try:
            if self.config.on_exit is not None:
                self.config.on_exit(reason)
        finally:
            self._exit_reported.set()

    def _exit_text(self, reason: supervisors.ExitReason) -> str:
        if not reason.abnormal:
            return "app.stop() was called"
        text = f"its supervision tree exited ({reason})"
        crashes = list(self._recent_crashes)
        if crashes:
            text += "; last crashes: " + "; ".join(crashes)
        return text

    def _restart_tree(self) -> None:
        try:
            root = self._start_root()
        except BaseException as error:  # the restart itself failed: the app has stopped
            with self._lifecycle_lock:
                if self._stopped_because is None:
                    self._stopped_because = f"its tree exited and could not start again: {error}"
            self._exit_reported.set()
            return
        with self._lifecycle_lock:
            self.root = root
            stopping = self._stopping
        if stopping:  # stop() came while the tree was restarting
            root.stop(30.0)
            return
        self._relaunch_programs()

    # The tree. ------------------------------------------------------------------------

    def _lm_spec(self) -> supervisors.ChildSpec:
        config = self.config
        fallbacks: dict[str, Sequence[LM]] = {}
        if config.lm is not None and config.fallbacks:
            fallbacks[deployment_key(config.lm)] = config.fallbacks
        limits: dict[str, RateLimiter] = {}
        if config.rate_limit is not None:
            for lm in (config.lm, *config.fallbacks):
                if lm is not None:
                    limits[deployment_key(lm)] = RateLimiter(**config.rate_limit)
        breaker_options = dict(config.breaker)

        def make_breaker(key: str) -> CircuitBreaker:
            return CircuitBreaker(
                name=key, on_transition=self._breaker_transition, **breaker_options
            )

        self.dispatcher = Dispatcher(
            LMPoolConfig(
                workers=config.lm_workers,
                max_queue=config.lm_max_queue,
                fallbacks=fallbacks,
                breaker_factory=make_breaker,
                rate_limits=limits,
                publisher=self._publisher_if_wanted,
            )
        )
        workers: list[supervisors.ChildSpec]
        if config.lm_processes > 0:
            # The same concurrency, spread over the processes' slots.
            slots = -(-(config.lm_workers or _PROCESS_SLOTS) // config.lm_processes)
            workers = [
                supervisors.ChildSpec(
                    f"process-{i}",
                    LMProcess,
                    args=(
                        f"{self.name}-lm-{i}",
                        self.dispatcher,
                        slots,
                        self._publisher_if_wanted,
                    ),
                    shutdown=10.0,
                    # A process takes ~0.6 s to start when the machine is idle, many times
                    # that when it is loaded: a start is not a failure until this long.
                    start_timeout=_PROCESS_START_SECONDS,
                )
                for i in range(config.lm_processes)
            ]
        elif config.lm_workers == 0:
            # The default: event loops, lm_max_in_flight requests spread over them.
            slots = -(-config.lm_max_in_flight // config.lm_loops)
            workers = [
                supervisors.ChildSpec(
                    f"loop-{i}",
                    LMLoop,
                    args=(
                        f"{self.name}-lm-loop-{i}",
                        self.dispatcher,
                        slots,
                        self._publisher_if_wanted,
                    ),
                    shutdown=10.0,
                )
                for i in range(config.lm_loops)
            ]
        else:
            workers = [
                supervisors.ChildSpec(
                    f"worker-{i}",
                    LMWorker,
                    args=(
                        self.router_name,
                        self.registry,
                        self.dispatcher,
                        self._publisher_if_wanted,
                    ),
                    shutdown=2.0,
                )
                for i in range(config.lm_workers)
            ]
        return supervisors.Supervisor.child_spec(
            "lm",
            [
                supervisors.ChildSpec(
                    "router", LMRouter, args=(self.dispatcher,), name=self.router_name
                ),
                supervisors.Supervisor.child_spec(
                    "workers",
                    workers,
                    intensity=100,
                    period=5.0,
                    registry=self.registry,
                    label=f"{self.name}/lm/workers",
                ),
            ],
            strategy="rest_for_one",
            registry=self.registry,
            label=f"{self.name}/lm",
        )

    def _modules(self) -> supervisors.DynamicSupervisor:
        handle = self.root.supervisor("modules")
        assert isinstance(handle, supervisors.DynamicSupervisor)
        return handle

    def tree(self) -> supervisors.TreeNode:
        """The live supervision tree of the whole app (served programs show their version)."""
        return self.root.tree()

    # Serving. ---------------------------------------------------------------------------

    def serve(
        self,
        name: str,
        module: Module,
        *,
        idempotent: bool = False,
        timeout: float | None = None,
        max_in_flight: int | None = None,
        strategy: supervisors.Strategy = "one_for_one",
        load_saved_state: bool = True,
        intensity: int = 10,
        period: float = 5.0,
        max_crash_retries: int = 3,
    ) -> ProgramHandle:
        """Serve any Module as a supervised subtree mirroring its composition.

        With ``load_saved_state``, the latest learned state saved for ``name`` in the
        parameter store (by an earlier upgrade or optimization, even in an earlier process)
        is loaded into it: the program comes back optimized. ``intensity``/``period``: the
        restart intensity of the program's subtree; ``max_crash_retries``: how many crashes
        an idempotent call rides out before it fails.
        """
        given: object = module  # typed Module, but callers pass anything
        if not isinstance(given, Module):
            got = (
                f"the class {given.__name__}: pass an instance, {given.__name__}(...)"
                if isinstance(given, type)
                else type(given).__name__
            )
            raise TypeError(f"app.serve({name!r}, ...) needs a Module, got {got}")
        with self._programs_lock:  # before loading state: a clash is about the name
            if name in self._programs:
                raise ValueError(f"a program named {name!r} is already served")
        template = module.deepcopy()
        params = self._params()
        saved = params.load(name) if load_saved_state else None
        if saved is not None:
            try:
                Module.load_state(template, saved)
            except StateError as error:
                # State saved by another program under this name: reported, never loaded.
                raise StateError(
                    f"app.serve({name!r}, ...): the state saved for {name!r} in "
                    f"{str(self.config.data_dir)!r} was saved from a different program "
                    f"({error}); serve it under another name, or pass "
                    "load_saved_state=False to start from this module's own state"
                ) from None
            state_version = params.latest_version(name)
        else:
            state_version = params.save(name, program_state(template))
        program = self._new_program(
            name,
            "module",
            template,
            idempotent,
            timeout,
            max_in_flight,
            strategy,
            intensity,
            period,
            max_crash_retries,
        )
        program.state_version = state_version
        return self._launch(program)

    def program(
        self,
        name: str,
        steps: Sequence[Sequence[Any]],
        *,
        strategy: supervisors.Strategy = "one_for_one",
        idempotent: bool = False,
        timeout: float | None = None,
        max_in_flight: int | None = None,
        intensity: int = 10,
        period: float = 5.0,
        max_crash_retries: int = 3,
    ) -> ProgramHandle:
        """Serve a pipeline: each ``(id, ModuleClass, kwargs)`` step is a supervised actor
        (or subtree), and each step's outputs are merged into the next step's inputs.

        The steps sit side by side under the program's supervisor; a call goes from the
        caller to each step's actor in turn and back (see runtime/pipeline.py)."""
        if not steps:
            raise ValueError(f"app.program({name!r}, ...) needs at least one step")
        built = [instantiate_step(step) for step in steps]
        ids = [sid for sid, _ in built]
        if len(set(ids)) != len(ids):
            raise ValueError(f"app.program({name!r}, ...): duplicate step ids in {ids}")
        program = self._new_program(
            name,
            "pipeline",
            built,
            idempotent,
            timeout,
            max_in_flight,
            strategy,
            intensity,
            period,
            max_crash_retries,
        )
        program.steps = tuple(PipelineStep(sid, accepted_inputs(m)) for sid, m in built)
        return self._launch(program)

    def _new_program(
        self,
        name: str,
        kind: str,
        template: Any,
        idempotent: bool,
        timeout: float | None,
        max_in_flight: int | None,
        strategy: supervisors.Strategy,
        intensity: int,
        period: float,
        max_crash_retries: int,
    ) -> ServedProgram:
        if not name or "/" in name or "@" in name:
            raise ValueError(f"a program name is non-empty, without '/' or '@': {name!r}")
        with self._programs_lock:
            if name in self._programs:
                raise ValueError(f"a program named {name!r} is already served")
        call_timeout = self.config.call_timeout if timeout is None else timeout
        if max_crash_retries < 0:
            raise ValueError(f"max_crash_retries must be >= 0, got {max_crash_retries!r}")
        options = TreeOptions(
            strategy=strategy,
            intensity=intensity,
            period=period,
            max_in_flight=self.config.module_max_in_flight,
            call_timeout=call_timeout,
        )
        return ServedProgram(
            name=name,
            kind=kind,
            version=1,
            entry_name="",
            child_id="",
            gate=_Gate(max_in_flight or self.config.max_in_flight),
            idempotent=idempotent,
            call_timeout=call_timeout,
            options=options,
            template=template,
            max_crash_retries=max_crash_retries,
        )

    def _program_spec(self, program: ServedProgram, version: int) -> supervisors.ChildSpec:
        """The program's subtree as a child of ``modules``. Its restarts back off, so a
        program that cannot start again retries slowly instead of exhausting the
        ``modules`` supervisor's intensity and taking the other programs down with it."""
        return dataclasses.replace(self._version_spec(program, version), backoff=_PROGRAM_BACKOFF)

    def _version_spec(self, program: ServedProgram, version: int) -> supervisors.ChildSpec:
        child_id = f"{program.name}@v{version}"
        prefix = f"{self.name}/{child_id}/"
        services = ModuleServices(
            registry=self.registry,
            dispatcher=self.dispatcher,
            load_state=partial(self._load_state, program, program.state_version),
            on_event=self._module_event,
            meter_for=program.meter_for,
        )
        if program.kind == "module":
            return module_subtree(
                child_id, "", program.template, prefix, services, program.options, program.name
            )
        # A pipeline: its steps only (registered as prefix + step id); callers drive calls
        # through them.
        children = [
            module_subtree(sid, sid, module, prefix, services, program.options, program.name)
            for sid, module in program.template
        ]
        return supervisors.Supervisor.child_spec(
            child_id,
            children,
            strategy=program.options.strategy,
            intensity=program.options.intensity,
            period=program.options.period,
            registry=self.registry,
            label=f"{self.name}/{child_id}",
        )

    def _launch(self, program: ServedProgram) -> ProgramHandle:
        spec = self._program_spec(program, program.version)
        self._modules().start_child(spec)
        program.child_id = spec.id
        program.entry_name = f"{self.name}/{spec.id}/"
        with self._programs_lock:
            self._programs[program.name] = program
        return ProgramHandle(self, program)

    def handle(self, name: str) -> ProgramHandle:
        """A handle to a served program, by name (KeyError with the names served if not)."""
        with self._programs_lock:
            program = self._programs.get(name)
            if program is None:
                raise KeyError(f"no program named {name!r}; served: {sorted(self._programs)}")
        return ProgramHandle(self, program)

    def upgrade(
        self, program: ServedProgram, state_or_module: Any, *, drain_timeout: float = 60.0
    ) -> int:
        """Blue/green: start the new version beside the old, switch new calls to it, let the
        old version's calls in flight finish, then stop the old version."""
        check_upgrade(program.name, program.kind, state_or_module)
        with program.lock:
            params = self._params()
            template: Any
            if program.kind == "module":
                if isinstance(state_or_module, Module):
                    template = state_or_module.deepcopy()
                else:
                    template = program.template.deepcopy()
                    Module.load_state(template, dict(state_or_module))
                state = program_state(template)
            else:
                if not isinstance(state_or_module, Mapping):
                    raise TypeError("a pipeline is upgraded with a state dict")
                steps = []
                for sid, module in program.template:
                    copy_ = module.deepcopy()
                    part = substate(state_or_module, sid)
                    if part is not None:
                        try:
                            Module.load_state(copy_, part)
                        except StateError as exc:
                            raise StateError(
                                f"step {sid!r} of {program.name!r}: {exc}. A pipeline's "
                                "state is keyed by step and predictor path, e.g. "
                                f"{{'{sid}.<path>': ...}} (or {{'{sid}': ...}} for a "
                                "step that is itself a predictor); steps left out keep theirs"
                            ) from exc
                    steps.append((sid, copy_))
                template, state = steps, dict(state_or_module)
            program.state_version = params.save(program.name, state)
            old_version, old_child = program.version, program.child_id
            program.template = template
            new_version = old_version + 1
            spec = self._program_spec(program, new_version)
            self._modules().start_child(spec)
            # The switch: from here on, calls resolve the new entry.
            program.entry_name = f"{self.name}/{spec.id}/"
            program.child_id = spec.id
            program.version = new_version
            deadline = time.monotonic() + drain_timeout
            while program.gate.in_flight(old_version) and time.monotonic() < deadline:
                time.sleep(0.005)
            program.retired.add(old_version)
            self._modules().terminate_child(old_child)
            return new_version

    def optimize(
        self,
        optimizer: Any,
        student: Module,
        *,
        trainset: Sequence[Any],
        valset: Sequence[Any] | None = None,
        run_id: str | None = None,
        seed: int = 0,
    ) -> Any:
        """Start an optimization run as a supervised subtree under ``runs`` and return its
        ``RunHandle`` (``progress()``, ``result(timeout)``, ``cancel()``). It checkpoints
        after every step; starting again with the ``run_id`` of an earlier run (even one
        whose process was killed) resumes it from its last checkpoint. See runtime/runs.py.
        """
        from dspy_actors.runtime.runs import start_run

        return start_run(
            self, optimizer, student, trainset=trainset, valset=valset, run_id=run_id, seed=seed
        )

    def stop_program(self, name: str) -> None:
        with self._programs_lock:
            program = self._programs.pop(name, None)
        if program is None:
            raise KeyError(f"no program named {name!r}")
        program.stopped = True
        self._modules().terminate_child(program.child_id)

    # State and dead letters. ---------------------------------------------------------------

    def _params(self) -> ParameterStore:
        store = self.stores.params
        if store is None:
            raise RuntimeError(f"app {self.name!r}: the parameter store is not open")
        return store

    def _load_state(
        self, program: ServedProgram, version: int | None, path: str
    ) -> dict[str, Any] | None:
        if version is None or self.stores.params is None:
            return None
        return substate(self.stores.params.load(program.name, version), path)

    @property
    def parameters(self) -> ParameterStore:
        """The parameter store (learned state of served programs, by version)."""
        return self._params()

    def dead_letter(
        self, program: str, inputs: Mapping[str, Any], crash: ModuleCrashed, crashes: int
    ) -> str:
        """Quarantine ``inputs`` of ``program`` (called by handles); returns the letter's id."""
        store = self.stores.dead_letters
        cause = crash.__cause__ or crash
        if store is None:
            raise crash
        letter = store.add(
            program=program,
            module_path=crash.module_path,
            inputs=inputs,
            exception=cause,
            attempts=crashes,
        )
        self.poison.quarantine(fingerprint(program, inputs), letter.id)
        self.events.publish(
            ev.DeadLetterEvent(
                dead_letter_id=letter.id,
                program=program,
                module_path=crash.module_path,
                exception_type=letter.exception_type,
                attempts=crashes,
            )
        )
        return letter.id

    def dead_letters(self, program: str | None = None) -> list[DeadLetter]:
        """Quarantined inputs not yet replayed (of one program, if given)."""
        store = self.stores.dead_letters
        return [] if store is None else store.list(program)

    def replay_dead_letter(self, letter_id: str) -> Any:
        """Release a quarantined input and call its program with it again (a quarantined
        tool call, program ``tool:<name>``, is released for agents to call again)."""
        store = self.stores.dead_letters
        letter = None if store is None else store.get(letter_id)
        if letter is None or store is None:
            raise KeyError(f"no dead letter {letter_id!r}")
        if letter.program.startswith(TOOL_LETTER_PREFIX):
            # A quarantined tool call: release it so agents may call it again (returns None).
            self.tools.release(letter.program.removeprefix(TOOL_LETTER_PREFIX), letter.inputs)
            store.mark_replayed(letter_id)
            return None
        self.poison.release(fingerprint(letter.program, letter.inputs))
        store.mark_replayed(letter_id)
        return self.handle(letter.program).call_with(letter.inputs)

    # Context and events. ------------------------------------------------------------------

    def default_overrides(self) -> dict[str, Any]:
        """Settings every call through this app carries unless the caller set them."""
        active = settings.current_overrides()
        defaults: dict[str, Any] = {}
        if "tool_runner" not in active:
            defaults["tool_runner"] = self.tools
        if self.lm is not None and "lm" not in active:
            defaults["lm"] = self.lm
        return defaults

    def pooled_overrides(self) -> dict[str, Any]:
        """Like :meth:`default_overrides`, for code running outside actors (optimization
        runs): the LM (the caller's ``context(lm=...)``, else the app's) is wrapped so that
        its calls go through the app's LM pool and are bounded by it."""
        lm = settings.current_overrides().get("lm", self.lm)
        if lm is None or isinstance(lm, PooledLM):
            return {}
        return {"lm": PooledLM(lm, self.dispatcher)}

    def subscribe(self, pattern: str, callback: Any) -> ev.Subscription:
        """Subscribe to app events by topic (``"lm.*"``, ``"module.end"``, ``"*"``)."""
        return self.events.subscribe(pattern, callback)

    def console(self, port: int = 0, **options: Any) -> Any:
        """Serve the live console of this app on 127.0.0.1:``port`` and return it (a
        ``dspy_actors.console.Console``); see ``dspy_actors.console.start_console``."""
        from dspy_actors.console import start_console

        return start_console(self, port, **options)

    def _publisher_if_wanted(self) -> Callable[[ev.Event], None] | None:
        """How to publish, or None while nobody listens (then no event is even built)."""
        return self.events.publish if self.events.subscriptions() else None

    def _module_event(self, topic: str, path: str, data: dict[str, Any]) -> None:
        if not self.events.subscriptions():
            return  # nobody listens: keep the hot path free
        trace = data.get("trace_id")
        event: ev.Event
        if topic == "module.start":
            event = ev.ModuleStart(trace_id=trace, module_path=path)
        elif topic == "module.end":
            event = ev.ModuleEnd(trace_id=trace, module_path=path)
        else:
            event = ev.ModuleError(
                trace_id=trace, module_path=path, error_type=str(data.get("error", ""))
            )
        self.events.publish(event)

    def _breaker_transition(self, transition: Any) -> None:
        self.events.publish(
            ev.BreakerTransition(
                deployment=transition.name,
                from_state=transition.from_state,
                to_state=transition.to_state,
                failure_rate=transition.failure_rate,
                slow_call_rate=getattr(transition, "slow_rate", None),
            )
        )

    def _supervision_event(self, event: supervisors.SupervisorEvent) -> None:
        ours = event.supervisor == self.name or event.supervisor.startswith(self.name + "/")
        if not ours:
            return
        if event.kind == "child_exited" and event.reason and event.supervisor == self.name:
            self._recent_crashes.append(f"{event.child_id}: {event.reason}")
        if event.kind == "child_restarted":
            if event.supervisor == self.name and event.child_id == "modules":
                # A DynamicSupervisor comes back empty: serve every program again.
                self.executor.submit(self._relaunch_programs)
            if self.events.subscriptions():
                self.events.publish(
                    ev.RuntimeRestart(
                        supervisor=event.supervisor,
                        child_id=event.child_id or "",
                        restart_count=event.restart_count,
                    )
                )
        elif event.kind == "escalated":
            self.events.publish(
                ev.RuntimeEscalation(
                    supervisor=event.supervisor,
                    child_id=event.child_id or "",
                    reason=event.reason or "",
                )
            )

    def _relaunch_programs(self) -> None:
        with self._programs_lock:
            programs = [p for p in self._programs.values() if not p.stopped]
        for program in programs:
            with program.lock:
                try:
                    self._modules().start_child(self._program_spec(program, program.version))
                except supervisors.AlreadyStarted:
                    continue
                except supervisors.SupervisorError as error:
                    supervisors_log.error(
                        "program_relaunch_failed", program=program.name, error=repr(error)
                    )

    # Lifecycle. ------------------------------------------------------------------------------

    def stop(self, timeout: float = 60.0) -> None:
        """Shut the tree down in reverse order; no thread is left behind. Runs by itself at
        interpreter exit for an app that was not stopped."""
        from dspy_actors.runtime.runs import cancel_all

        atexit.unregister(self._stop_at_exit)
        with self._lifecycle_lock:
            self._stopping = True
            if self._stopped_because is None:
                self._stopped_because = "app.stop() was called"
        restarter = self._restarter
        if restarter is not None:
            restarter.join(timeout=min(timeout, 60.0))
        # A run's driver stops between examples when cancelled; stopping the tree without
        # this could abandon one busy in a long step.
        cancel_all(self, timeout=min(timeout, 30.0))
        run_stop_hooks(self)  # consoles, metrics, tracing attached to this app
        if self._unsubscribe_supervision is not None:
            self._unsubscribe_supervision()
            self._unsubscribe_supervision = None
        with self._programs_lock:
            for program in self._programs.values():
                program.stopped = True
        self.events.flush(2.0)  # deliver what was published before the stop
        self.root.stop(timeout)
        # The exit is reported from the root's monitor, which may lag its stop: stop()
        # returns once on_exit has run (bounded: a callback that hangs is not waited for).
        self._exit_reported.wait(timeout=min(timeout, 10.0))
        self.executor.shutdown(wait=True, cancel_futures=True)
        # Tool threads end with their tools; a hung one is abandoned (a daemon thread).
        self.tools.join(min(timeout, 5.0))
        if self.config.private_data_dir:
            shutil.rmtree(self.config.data_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


# LM calls in flight over worker processes when lm_workers does not say.
_PROCESS_SLOTS = 64


def _stop_if_alive(app_ref: weakref.ref[App]) -> None:
    app = app_ref()
    if app is not None and app.root.is_alive:
        app.stop(timeout=30.0)


def start(
    *,
    lm: LM | None = None,
    fallbacks: Sequence[LM] = (),
    name: str | None = None,
    data_dir: str | Path | None = None,
    lm_workers: int = 0,
    lm_max_queue: int = 4096,
    lm_processes: int = 0,
    breaker: Mapping[str, Any] | None = None,
    rate_limit: Mapping[str, Any] | None = None,
    max_in_flight: int = 10_000,
    module_max_in_flight: int = 10_000,
    poison_threshold: int = 3,
    call_timeout: float = 120.0,
    submit_threads: int = 256,
    log: Literal["json", "console"] | None = None,
    on_exit: Callable[[supervisors.ExitReason], None] | None = None,
    root_intensity: int = 3,
    root_period: float = 5.0,
    self_restarts: int = 0,
    lm_max_in_flight: int = 4096,
    lm_loops: int = 1,
) -> App:
    """Start an application tree (also a context manager: ``with dsa.start(...) as app``).

    - ``lm``: the default LM of every call through the app; ``fallbacks``: LMs tried, in
      order, while its circuit breaker is open.
    - ``data_dir``: where the SQLite stores live. Default: the user data dir / ``name``
      when a ``name`` is given; with neither, a private temporary directory removed on
      ``stop()`` (so state saved by one script never loads into another's programs).
    - ``lm_max_in_flight``: LM requests in flight at once (default 4,096), on ``lm_loops``
      asyncio event loops (default 1), each a supervised actor owning one thread: a
      request in flight costs a socket, not a thread. ``lm_max_queue``: LM requests
      waiting beyond that before ``LMOverloaded`` (an ``Overloaded`` naming both bounds;
      never counted against a circuit breaker).
    - ``lm_workers``: 0 (the default) uses the event loops; N > 0 runs LM calls in N
      blocking worker threads instead (N calls in flight), as before the loops.
    - ``lm_processes``: N > 0 runs LM calls' HTTP in N worker processes (``lm_workers``
      calls in flight, 64 if 0, spread over them).
      Each process costs ~0.6 s to start and ~40 MB. See ``dspy_actors.runtime.lm_process``.
    - ``breaker``: CircuitBreaker options (``failure_rate_threshold``, ``wait_in_open``, ...);
      ``rate_limit``: RateLimiter options per deployment.
    - ``max_in_flight`` per program and ``module_max_in_flight`` per module actor: past
      them, calls fail fast with ``Overloaded``.
    - ``poison_threshold``: crashes by one input before it is dead-lettered.
    - ``call_timeout``: the default deadline of a call, in seconds.
    - ``submit_threads``: threads behind ``handle.submit``/``batch`` (calls in flight
      through those at once; ``call`` from your own threads and ``acall``, which holds no
      thread, are not limited by it).
    - ``log``: ``"json"`` or ``"console"`` to log every event through structlog.
    - ``on_exit``: called with the root's exit reason when the app's tree exits (after
      ``stop()``: shutdown; after a crash storm beyond the root's intensity: a crash with
      RestartIntensityExceeded, and every call then fails at once with ``AppStopped``
      naming the crashes that led there).
    - ``root_intensity``/``root_period``: the root gives up (the app stops) after more
      than ``root_intensity`` restarts of its children within ``root_period`` seconds.
    - ``self_restarts``: how many times an app whose tree gave up starts a fresh tree and
      serves its programs again (as OTP's heart restarts a node), before it stays stopped.
      Calls made while it restarts wait for it (within their deadline).
    """
    if root_intensity < 0 or root_period <= 0:
        raise ValueError(
            "dsa.start(root_intensity=..., root_period=...) must be >= 0 and > 0, got "
            f"{root_intensity!r} and {root_period!r}"
        )
    if self_restarts < 0:
        raise ValueError(f"dsa.start(self_restarts=...) must be >= 0, got {self_restarts!r}")
    if lm_workers < 0:
        raise ValueError(f"dsa.start(lm_workers=...) must be >= 0, got {lm_workers!r}")
    if lm_max_in_flight < 1:
        raise ValueError(f"dsa.start(lm_max_in_flight=...) must be >= 1, got {lm_max_in_flight!r}")
    if not 1 <= lm_loops <= lm_max_in_flight:
        raise ValueError(
            f"dsa.start(lm_loops=...) must be between 1 and lm_max_in_flight "
            f"({lm_max_in_flight}), got {lm_loops!r}"
        )
    if not 0 <= lm_processes <= (lm_workers or _PROCESS_SLOTS):
        raise ValueError(
            f"dsa.start(lm_processes=...) must be between 0 and lm_workers "
            f"({lm_workers or _PROCESS_SLOTS}), got {lm_processes!r}"
        )
    if lm_processes:
        for each in (lm, *fallbacks):
            if each is not None:
                each.worker_spec()  # fails now, not on the first call, for an LM it cannot send
    app_name = name or f"app{next(_app_ids)}"
    directory, private = _data_dir_for(name, data_dir)
    config = AppConfig(
        name=app_name,
        data_dir=directory,
        lm=lm,
        fallbacks=tuple(fallbacks),
        lm_workers=lm_workers,
        lm_max_queue=lm_max_queue,
        lm_processes=lm_processes,
        breaker=dict(breaker or {}),
        rate_limit=None if rate_limit is None else dict(rate_limit),
        max_in_flight=max_in_flight,
        module_max_in_flight=module_max_in_flight,
        poison_threshold=poison_threshold,
        call_timeout=call_timeout,
        submit_threads=submit_threads,
        log=log,
        on_exit=on_exit,
        root_intensity=root_intensity,
        root_period=root_period,
        self_restarts=self_restarts,
        private_data_dir=private,
        lm_max_in_flight=lm_max_in_flight,
        lm_loops=lm_loops,
    )
    try:
        return App(config)
    except BaseException:
        if private:
            shutil.rmtree(directory, ignore_errors=True)
        raise


def _data_dir_for(name: str | None, data_dir: str | Path | None) -> tuple[Path, bool]:
    """Where an app's stores live, and whether that directory is the app's own (removed
    when it stops). Saved state is shared only by apps that ask for it: an explicit
    ``data_dir``, or an explicit ``name`` (the user data dir / name). An app with neither
    gets a private temporary directory, so a script never loads state another, unrelated
    script saved under the same default name."""
    if data_dir is not None:
        path = Path(data_dir)
        if path.exists() and not path.is_dir():
            raise ValueError(
                f"dsa.start(data_dir=...): {str(path)!r} exists and is not a directory"
            )
        return path, False
    if name is not None:
        return Path(platformdirs.user_data_dir("dspy_actors")) / name, False
    return Path(tempfile.mkdtemp(prefix="dspy_actors-")), True
