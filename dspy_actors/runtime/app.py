"""The application: ``dsa.start(...)`` builds the supervision tree and serves programs.

    root (one_for_one)
    ├── store      parameter store + dead letters (SQLite): opened on start, closed on stop
    ├── events     event bus (publish/subscribe by topic)
    ├── lm         rest_for_one: the LM router, then its pool of workers
    ├── modules    DynamicSupervisor: one subtree per served program (per version)
    └── runs       DynamicSupervisor: evaluation and optimization runs

Children start in that order (each one's dependencies first) and stop in reverse.

``App`` is a facade: it owns the tree's lifecycle (start, self-restart, stop) and hands
every other job to a service of its own, each in its own module:

- ``programs``   runtime/_programs.py: serve, look up, upgrade, stop programs (records:
                 runtime/_served.py)
- LM pool        runtime/_lm_wiring.py: the ``lm`` node and its dispatcher, per tree
- ``stores``     runtime/_stores.py: the stores (SQLite files, or a PostgreSQL database
                 shared by replicas) and the ``store`` node
- ``quarantine`` runtime/_quarantine.py: dead letters
- ``bridge``     runtime/_event_bridge.py: module, breaker and supervision reports as events
- ``config``     runtime/_app_config.py: the settings ``start`` checked

Over 400 lines: the facade: ``start``'s documented, checked arguments and one short
delegating method per public ``App`` operation; the work is in the services above.
"""

from __future__ import annotations

import atexit
import itertools
import shutil
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Self, cast

import supervisors
from dspy_actors import _settings as settings
from dspy_actors import redaction
from dspy_actors._stop_hooks import run_stop_hooks
from dspy_actors.lm._misplaced_forward import refuse_misplaced_forward
from dspy_actors.primitives.module import Module
from dspy_actors.runtime import _events as ev
from dspy_actors.runtime._app_config import AppConfig, data_dir_for
from dspy_actors.runtime._call_stats import CallStats, LMCounts
from dspy_actors.runtime._dead_letters import DeadLetter
from dspy_actors.runtime._errors import AppStopped, ModuleCrashed
from dspy_actors.runtime._event_bridge import EventBridge
from dspy_actors.runtime._lm_pool import PooledLM
from dspy_actors.runtime._lm_wiring import wire_lm_pool
from dspy_actors.runtime._parameter_store import ParameterStore
from dspy_actors.runtime._poison import PoisonTracker
from dspy_actors.runtime._pool_options import check_breaker, check_rate_limit
from dspy_actors.runtime._programs import ProgramLimits, Programs
from dspy_actors.runtime._quarantine import Quarantine
from dspy_actors.runtime._run_plan import RunnableOptimizer
from dspy_actors.runtime._served import ProgramOptions, ServedProgram
from dspy_actors.runtime._served import program_state as program_state  # re-exported
from dspy_actors.runtime._served import substate as substate  # re-exported
from dspy_actors.runtime._stores import StoreOwner, Stores, check_store_url
from dspy_actors.runtime._tools import served_tool_runner
from dspy_actors.runtime._tree_build import PROGRAM_INTENSITY, PROGRAM_PERIOD
from dspy_actors.runtime.handle import ProgramHandle
from dspy_actors.runtime.runs import RunHandle, cancel_all, start_run

if TYPE_CHECKING:
    from dspy_actors.lm._base_lm import BaseLM
    from dspy_actors.lm._lm import LM

__all__ = ["App", "AppConfig", "ServedProgram", "start"]

_app_ids = itertools.count(1)
supervisors_log = redaction.get_logger("dspy_actors.runtime")
# Secrets never reach a log through the runtime's dependencies either (see redaction).
redaction.install()


# The console is a view above the runtime (docs/ARCHITECTURE.md), so this module does not
# import it: the package's __init__ (run before any of its submodules) sets the opener.
_console_opener: Callable[..., Any] | None = None


def set_console_opener(opener: Callable[..., Any]) -> None:
    """Set what ``App.console`` calls (``opener(app, port, **options)``)."""
    global _console_opener
    _console_opener = opener


class App:
    """A running application tree. Create it with :func:`dspy_actors.start`."""

    def __init__(self, config: AppConfig) -> None:
        self.config = config
        self.name = config.name
        self.lm = config.lm
        self.registry = supervisors.Registry()
        # With a shared store, crashes of one input on every replica add up (_stores.py).
        self.poison = PoisonTracker(config.poison_threshold, lambda: self.stores.poison_counts)
        self.stores = Stores(
            config.data_dir,
            config.name,
            config.store,
            # Another replica saved a program's state: this one follows it (programs.py).
            on_saved=lambda program: self.programs.follow_saved(program),
            retry_for=config.store_retry_for,
        )
        self.events = ev.EventBus(name=f"{self.name}/events", registry=self.registry)
        self.router_name = f"{self.name}/lm/router"
        self.executor = ThreadPoolExecutor(
            max_workers=config.submit_threads, thread_name_prefix=f"{self.name}-submit"
        )
        # Module calls and LM requests counted where they are answered (read by metrics and
        # the console).
        self.call_stats = CallStats()
        self.lm_counts = LMCounts()
        self.bridge = EventBridge(
            self.name,
            self.events,
            lambda: self.executor.submit(self.programs.relaunch),
            self.lm_counts,
        )
        self.programs = Programs(
            self.name,
            self.registry,
            ProgramLimits(
                call_timeout=config.call_timeout,
                max_in_flight=config.max_in_flight,
                module_max_in_flight=config.module_max_in_flight,
            ),
            self.stores,
            self._modules,
            lambda: self.dispatcher,
            self.bridge.module_publisher,
            call_stats=self.call_stats,
        )
        # Served agents' tool calls: events and quarantine to dead letters (runtime/_tools.py).
        self.tools = served_tool_runner(
            self.events.publish,
            lambda: bool(self.events.subscriptions()),
            lambda: self.stores.dead_letters,
            thread_name_prefix=f"{self.name}-tool",
        )
        self.quarantine = Quarantine(self.stores, self.poison, self.events, self.tools)
        # Set once the root's exit was reported (and the on_exit callback has returned).
        self._exit_reported = threading.Event()
        self._unsubscribe_supervision: Any = None
        # Why the app can no longer serve calls (None while it can): stop() or its tree's
        # exit, with the crash reasons that led there. Calls fail at once with it.
        self._stopped_because: str | None = None
        self._stopping = False
        self._self_restarts_left = config.self_restarts
        self._lifecycle_lock = threading.Lock()
        self._restarter: threading.Thread | None = None
        if config.log is not None:
            self.events.subscribe("*", ev.structlog_subscriber(renderer=config.log))
        self._unsubscribe_supervision = supervisors.subscribe(self.bridge.supervision_event)
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

    # The tree and its lifecycle. --------------------------------------------------------

    def _start_root(self) -> supervisors.Supervisor:
        # Each tree gets its own LM pool (a restarted tree a fresh one).
        lm_pool = wire_lm_pool(
            self.config,
            self.registry,
            self.router_name,
            self.bridge.lm_publisher,
            self.bridge.breaker_transition,
        )
        self.dispatcher = lm_pool.dispatcher
        return supervisors.Supervisor.start(
            [
                supervisors.ChildSpec("store", StoreOwner, args=(self.stores,), shutdown=10.0),
                self.events.child_spec("events"),
                lm_pool.spec,
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
        crashes = list(self.bridge.recent_crashes)
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
        self.programs.relaunch()

    def _modules(self) -> supervisors.DynamicSupervisor:
        handle = self.root.supervisor("modules")
        assert isinstance(handle, supervisors.DynamicSupervisor)
        return handle

    def tree(self) -> supervisors.TreeNode:
        """The live supervision tree of the whole app (served programs show their version)."""
        return self.root.tree()

    # Serving (runtime/_programs.py). --------------------------------------------------------

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
        intensity: int = PROGRAM_INTENSITY,
        period: float = PROGRAM_PERIOD,
        max_crash_retries: int | None = None,
    ) -> ProgramHandle:
        """Serve any Module as a supervised subtree mirroring its composition.

        With ``load_saved_state``, the latest learned state saved for ``name`` in the
        parameter store (by an earlier upgrade or optimization, even in an earlier process)
        is loaded into it: the program comes back optimized. ``intensity``/``period``: the
        restart intensity of the program's subtree; ``max_crash_retries``: how many crashes
        an idempotent call rides out before it fails (None: as many as its deadline
        allows, at most ``calls.REPEAT_LIMIT``).
        """
        options = ProgramOptions(
            idempotent=idempotent,
            timeout=timeout,
            max_in_flight=max_in_flight,
            strategy=strategy,
            intensity=intensity,
            period=period,
            max_crash_retries=max_crash_retries,
        )
        program = self.programs.serve_module(
            name, module, options, load_saved_state=load_saved_state
        )
        return ProgramHandle(self, program)

    def program(
        self,
        name: str,
        steps: Sequence[Sequence[Any]],
        *,
        strategy: supervisors.Strategy = "one_for_one",
        idempotent: bool = False,
        timeout: float | None = None,
        max_in_flight: int | None = None,
        intensity: int = PROGRAM_INTENSITY,
        period: float = PROGRAM_PERIOD,
        max_crash_retries: int | None = None,
    ) -> ProgramHandle:
        """Serve a pipeline: each ``(id, ModuleClass, kwargs)`` step is a supervised actor
        (or subtree), and each step's outputs are merged into the next step's inputs.

        The steps sit side by side under the program's supervisor; a call goes from the
        caller to each step's actor in turn and back (see runtime/_pipeline.py)."""
        options = ProgramOptions(
            idempotent=idempotent,
            timeout=timeout,
            max_in_flight=max_in_flight,
            strategy=strategy,
            intensity=intensity,
            period=period,
            max_crash_retries=max_crash_retries,
        )
        return ProgramHandle(self, self.programs.serve_pipeline(name, steps, options))

    def handle(self, name: str) -> ProgramHandle:
        """A handle to a served program, by name (KeyError with the names served if not)."""
        return ProgramHandle(self, self.programs.get(name))

    def upgrade(
        self, program: ServedProgram, state_or_module: Any, *, drain_timeout: float = 60.0
    ) -> int:
        """Blue/green: start the new version beside the old, switch new calls to it, let the
        old version's calls in flight finish, then stop the old version."""
        return self.programs.upgrade(program, state_or_module, drain_timeout)

    def optimize(
        self,
        optimizer: RunnableOptimizer,
        student: Module,
        *,
        trainset: Sequence[Any],
        valset: Sequence[Any] | None = None,
        run_id: str | None = None,
        seed: int = 0,
        executor: Any = None,
    ) -> RunHandle:
        """Start an optimization run as a supervised subtree under ``runs`` and return its
        ``RunHandle`` (``progress()``, ``result(timeout)``, ``cancel()``). It checkpoints
        after every step; starting again with the ``run_id`` of an earlier run (even one
        whose process was killed) resumes it from its last checkpoint. See runtime/runs.py.
        ``executor`` (a ``dspy_actors.distributed.RayExecutor``, say) runs its examples
        elsewhere; the default is the app's ``ray_address`` cluster, else local threads.
        """
        return start_run(
            self, optimizer, student, trainset=trainset, valset=valset, run_id=run_id, seed=seed,
            executor=executor,
        )  # fmt: skip

    def stop_program(self, name: str) -> None:
        """Stop serving ``name`` (KeyError if it is not served)."""
        self.programs.stop(name)

    # State and dead letters (runtime/_stores.py, runtime/_quarantine.py). --------------------

    @property
    def parameters(self) -> ParameterStore:
        """The parameter store (learned state of served programs, by version)."""
        return self.stores.parameters()

    def dead_letter(
        self, program: str, inputs: Mapping[str, Any], crash: ModuleCrashed, crashes: int
    ) -> str:
        """Quarantine ``inputs`` of ``program`` (called by handles); returns the letter's id."""
        return self.quarantine.dead_letter(program, inputs, crash, crashes)

    def dead_letters(self, program: str | None = None) -> list[DeadLetter]:
        """Quarantined inputs not yet replayed (of one program, if given)."""
        return self.quarantine.letters(program)

    def replay_dead_letter(self, letter_id: str) -> Any:
        """Release a quarantined input and call its program with it again (a quarantined
        tool call, program ``tool:<name>``, is released for agents to call again)."""
        letter = self.quarantine.release(letter_id)
        if letter is None:  # a tool call: released for agents to call again
            return None
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
        if _console_opener is None:
            raise RuntimeError(
                "App.console: no console opener is set; import dspy_actors (the package "
                "sets it) or call dspy_actors.console.start_console(app, port) directly"
            )
        return _console_opener(self, port, **options)

    # Stopping. ------------------------------------------------------------------------------

    def stop(self, timeout: float = 60.0) -> None:
        """Shut the tree down in reverse order; no thread is left behind. Runs by itself at
        interpreter exit for an app that was not stopped."""
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
        self.programs.stop_all()
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


def _stop_if_alive(app_ref: weakref.ref[App]) -> None:
    app = app_ref()
    if app is not None and app.root.is_alive:
        app.stop(timeout=30.0)


_LM_WORKERS_REMOVED = (
    "dsa.start(lm_workers={!r}): lm_workers was removed, LM worker threads are gone (LM "
    "calls run on event loops, where a call in flight costs a socket, not a thread). "
    "Bound the LM calls in flight with lm_max_in_flight=N (default 4096) and those waiting "
    "behind them with lm_max_queue=N; to run LM HTTP off this process, use lm_processes=N"
)


def start(
    *,
    lm: LM | BaseLM | None = None,
    fallbacks: Sequence[LM | BaseLM] = (),
    name: str | None = None,
    data_dir: str | Path | None = None,
    lm_workers: None = None,
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
    ray_address: str | None = None,
    store: str | None = None,
    store_retry_for: float = 10.0,
) -> App:
    """Start an application tree (also a context manager: ``with dsa.start(...) as app``).

    - ``lm``: the default LM of every call through the app; ``fallbacks``: LMs tried, in
      order, while its circuit breaker is open.
    - ``store``: a ``postgresql://`` URL to keep the parameter store, dead letters and
      runs in that database instead of SQLite files, shared by every replica started with
      it (an upgrade on one reaches all; see docs/deploying.md). Needs the ``postgres``
      extra. ``store_retry_for``: seconds a store operation retries a lost or unreachable
      database before it fails with ``StoreError`` (the app starts with the database down).
    - ``data_dir``: where the SQLite stores live. Default: the user data dir / ``name``
      when a ``name`` is given; with neither, a private temporary directory removed on
      ``stop()`` (so state saved by one script never loads into another's programs).
    - ``lm_max_in_flight``: LM requests in flight at once (default 4,096), on ``lm_loops``
      asyncio event loops (default 1), each a supervised actor owning one thread: a
      request in flight costs a socket, not a thread. ``lm_max_queue``: LM requests
      waiting beyond that before ``LMOverloaded`` (an ``Overloaded`` naming both bounds;
      never counted against a circuit breaker).
    - ``lm_processes``: N > 0 runs LM calls' HTTP in N worker processes instead of the
      event loops, off this process's GIL (``lm_max_in_flight`` spread over them; in a
      process a call in flight holds a thread). Each process costs ~0.6 s to start and
      ~40 MB. See ``dspy_actors.runtime._lm_process``.
    - ``lm_workers``: removed (LM worker threads lost every measurement to the event
      loops); passing it raises TypeError naming what replaces it.
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
    - ``ray_address``: runs started by ``app.optimize`` fan their examples out over this
      Ray cluster (``"auto"``: the one this machine belongs to), with ``rate_limit``
      enforced across it; see docs/deploying.md and ``dspy_actors.distributed``.
    """
    if root_intensity < 0 or root_period <= 0:
        raise ValueError(
            "dsa.start(root_intensity=..., root_period=...) must be >= 0 and > 0, got "
            f"{root_intensity!r} and {root_period!r}"
        )
    if self_restarts < 0:
        raise ValueError(f"dsa.start(self_restarts=...) must be >= 0, got {self_restarts!r}")
    if lm_workers is not None:
        raise TypeError(_LM_WORKERS_REMOVED.format(lm_workers))
    if lm_max_in_flight < 1:
        raise ValueError(f"dsa.start(lm_max_in_flight=...) must be >= 1, got {lm_max_in_flight!r}")
    if not 1 <= lm_loops <= lm_max_in_flight:
        raise ValueError(
            f"dsa.start(lm_loops=...) must be between 1 and lm_max_in_flight "
            f"({lm_max_in_flight}), got {lm_loops!r}"
        )
    if not 0 <= lm_processes <= lm_max_in_flight:
        raise ValueError(
            f"dsa.start(lm_processes=...) must be between 0 and lm_max_in_flight "
            f"({lm_max_in_flight}: each process takes at least one call), got {lm_processes!r}"
        )
    for each in (lm, *fallbacks):
        refuse_misplaced_forward(each, "dsa.start(lm=..., fallbacks=...)")
    if lm_processes:
        for each in (lm, *fallbacks):
            worker_spec = getattr(each, "worker_spec", None)  # (a custom LM runs in threads)
            if worker_spec is not None:
                worker_spec()  # fails now, not on the first call, for an LM it cannot send
    check_store_url(store)
    breaker = check_breaker({} if breaker is None else breaker)  # here, not in a crash loop
    rate_limit = None if rate_limit is None else check_rate_limit(rate_limit)
    if store_retry_for < 0:
        raise ValueError(f"dsa.start(store_retry_for=...) must be >= 0, got {store_retry_for!r}")
    app_name = name or f"app{next(_app_ids)}"
    directory, private = data_dir_for(name, data_dir)
    config = AppConfig(
        name=app_name,
        data_dir=directory,
        # A custom LM (BaseLM) stands where an LM does: the pool runs its own code for it
        # (runtime/_lm_user_calls.py) and reads only what both have (model, api_base...).
        lm=cast("LM | None", lm),
        fallbacks=cast("tuple[LM, ...]", tuple(fallbacks)),
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
        ray_address=ray_address,
        private_data_dir=private,
        lm_max_in_flight=lm_max_in_flight,
        lm_loops=lm_loops,
        store=store,
        store_retry_for=store_retry_for,
    )
    try:
        return App(config)
    except BaseException:
        if private:
            shutil.rmtree(directory, ignore_errors=True)
        raise
