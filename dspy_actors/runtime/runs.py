"""Optimization runs: supervised, checkpointed to SQLite after every step, resumable.

    run = start_run(app, BootstrapFewShotWithRandomSearch(metric), student,
                    trainset=train, valset=dev, run_id="qa-rs-1", seed=0)
    run.progress()              # RunStatus: steps done / restored, best score, attempts
    program = run.result(600)   # the compiled Module
    run.cancel()

A run is a subtree under the app's ``runs`` DynamicSupervisor::

    runs
    └── run-<run_id>        supervisor (temporary: a finished or failed run is not restarted)
        └── driver          RunActor (transient: restarted after a crash or a kill)

On each start the driver asks the optimizer for an attempt of the run (_run_plan.py: the
runtime's side of the contract; ``dspy_actors.optimizers.Optimizer`` fills it in) and
advances it one step per message (so a cancel, or a supervisor's stop, is handled between
steps); each step's JSON result is saved to ``<data_dir>/runs.sqlite3`` (_run_store.py)
before the next. A restarted driver, or a
new ``start_run`` with the same ``run_id`` (even in another process, after ``kill -9``),
builds the plan again and replays the saved steps without running them: the same seed
gives the same program, and the finished steps' LM calls are not made again. Inside the
step it resumes, every LM call that finished before the kill is answered from the run's LM
journal (_run_journal.py): only the calls in flight at the kill are made again. Inside a
step, bootstrapping and candidate evaluation run in parallel on bounded threads, or, with
an ``executor`` (``start_run(..., executor=RayExecutor(...))``, or the app's
``ray_address``), as that executor's work on other machines (evaluate/_executor.py: the
optimizer's attempt sends them; the run only hands its executor on); the driver still
runs the plan and checkpoints here. The LM journal covers the driver's own
calls only: a step resumed mid-way redoes its remote examples.
Progress is published on the app's event bus as ``RunProgress`` events (topic
``run.progress``).

Over 400 lines: a run's driver, handle, start and cancel share the run's ``_Shared`` state
and its lock; its store (_run_store.py) and the optimizer contract (_run_plan.py) are apart.
"""

from __future__ import annotations

import threading
import time
import uuid
import weakref
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal, Protocol

import supervisors
from dspy_actors import _settings as settings
from dspy_actors import redaction
from dspy_actors.lm._usage import ZERO_USAGE, Usage, UsageMeter, metering
from dspy_actors.primitives.example import Example
from dspy_actors.primitives.module import Module
from dspy_actors.runtime._events import RunProgress
from dspy_actors.runtime._run_journal import JournaledLM, LMJournal
from dspy_actors.runtime._run_plan import (
    AttemptState,
    RunAttempt,
    RunnableOptimizer,
    RunSetup,
    StepReport,
)
from dspy_actors.runtime._run_store import RunStore, SqliteCheckpointer

if TYPE_CHECKING:
    from concurrent.futures import Executor as ThreadExecutor

    from dspy_actors.runtime._app_config import AppConfig
    from dspy_actors.runtime._events import EventBus

__all__ = [
    "RunCancelled",
    "RunFailed",
    "RunHandle",
    "RunStatus",
    "RunStore",
    "SqliteCheckpointer",
    "cancel_all",
    "start_run",
]

_log = redaction.get_logger("dspy_actors.runtime.runs")


class RunStoreLocation(Protocol):
    """Where an app keeps its stores (``runtime.stores.Stores`` is one)."""

    def location(self, filename: str) -> Any:
        """``data_dir/filename``, or the app's shared PostgreSQL database."""
        ...


class RunHost(Protocol):
    """What a run needs of the app it runs in (``App`` is one): its ``runs`` supervisor
    (under ``root``), registry, settings, events, executor, LM pool and where its run
    store lives (``stores``: SQLite file or the shared database)."""

    @property
    def name(self) -> str: ...
    @property
    def registry(self) -> supervisors.Registry: ...
    @property
    def config(self) -> AppConfig: ...
    @property
    def events(self) -> EventBus: ...
    @property
    def executor(self) -> ThreadExecutor: ...
    @property
    def root(self) -> supervisors.Supervisor: ...
    @property
    def stores(self) -> RunStoreLocation: ...
    def pooled_overrides(self) -> dict[str, Any]: ...


# The unfinished runs of each app, for cancel_all (the app itself keeps no run state).
_active: weakref.WeakKeyDictionary[Any, dict[str, _Shared]] = weakref.WeakKeyDictionary()
_active_lock = threading.Lock()

RunState = Literal["running", "done", "failed", "cancelled"]


class RunCancelled(RuntimeError):
    """The run was cancelled before it finished."""


class RunFailed(RuntimeError):
    """The run's supervisor gave up on it (its driver kept crashing)."""


@dataclass(frozen=True)
class RunStatus:
    """A run's progress: ``steps_run`` were computed by this run (in any attempt),
    ``steps_restored`` came from checkpoints; ``attempts`` counts driver starts (1 +
    restarts); ``best_score`` is the best candidate score seen so far (if any); ``usage``
    the tokens of the LM calls this run made in this process (restored steps made none;
    cache hits cost none)."""

    run_id: str
    state: RunState
    steps_run: int = 0
    steps_restored: int = 0
    last_step: str | None = None
    best_score: float | None = None
    attempts: int = 0
    error: str | None = None
    usage: Usage = ZERO_USAGE


class _Shared:
    """What a run's handle and its (restartable) driver share."""

    def __init__(self, run_id: str) -> None:
        self.lock = threading.Lock()
        self.status = RunStatus(run_id, "running")
        self.future: Future[Module] = Future()
        self.cancel = threading.Event()
        # Every LM call of the run's steps, in whichever thread or LM worker it runs.
        self.meter = UsageMeter()

    def update(self, **changes: Any) -> RunStatus:
        with self.lock:
            self.status = replace(self.status, **changes)
            return self.status

    def finish(self, state: RunState, result: Module | None, error: BaseException | None) -> bool:
        with self.lock:
            if self.future.done():
                return False
            self.status = replace(
                self.status, state=state, error=None if error is None else str(error)
            )
        if error is not None:
            self.future.set_exception(error)
        else:
            assert result is not None
            self.future.set_result(result)
        return True


class RunActor(supervisors.SupervisedActor):
    """A run's driver: one plan step per message, checkpointed; see the module docstring."""

    def __init__(
        self,
        app: RunHost,
        optimizer: RunnableOptimizer,
        student: Module,
        trainset: list[Example],
        valset: list[Example] | None,
        seed: int,
        shared: _Shared,
        store: RunStore,
        executor: Any = None,
    ) -> None:
        super().__init__()
        self.executor = executor
        self.app = app
        self.optimizer = optimizer
        self.student = student
        self.trainset = trainset
        self.valset = valset
        self.seed = seed
        self.shared = shared
        self.store = store
        self.attempt: RunAttempt | None = None
        self.journal: LMJournal | None = None

    def on_start(self) -> None:
        status = self.shared.update(attempts=self.shared.status.attempts + 1)
        # Fresh counts per attempt: a restarted driver asks again from the step it resumes.
        self.journal = LMJournal(self.store, status.run_id)
        self.attempt = self.optimizer.start_attempt(
            RunSetup(
                student=self.student,
                trainset=self.trainset,
                valset=self.valset,
                seed=self.seed,
                cancel=self.shared.cancel,
                checkpointer=SqliteCheckpointer(self.store, status.run_id),
                on_step=self._on_step,
                executor=self.executor,
                app=self.app,
                app_config=self.app.config,
            )
        )
        self.actor_ref.tell("step")

    def _on_step(self, event: StepReport) -> None:
        status = self.shared.status
        score = event.data.get("score") if isinstance(event.data, dict) else None
        best = status.best_score
        if isinstance(score, int | float) and (best is None or score > best):
            best = float(score)
        status = self.shared.update(
            steps_run=status.steps_run + (0 if event.restored else 1),
            steps_restored=status.steps_restored + (1 if event.restored else 0),
            last_step=event.step,
            best_score=best,
        )
        self.app.events.publish(
            RunProgress(
                run_id=status.run_id,
                kind="optimize",
                completed=event.completed,
                score=best,
                message=("restored " if event.restored else "finished ")
                + event.step
                + (f" ({note})" if isinstance(note := event.data.get("progress"), str) else ""),
            )
        )

    def on_receive(self, message: Any) -> Any:
        if message != "step" or self.attempt is None:
            return None
        run_id = self.shared.status.run_id
        name = type(self.optimizer).__name__
        state: AttemptState = "cancelled"
        if not self.shared.cancel.is_set():
            with settings.context(**self._overrides()), metering(self.shared.meter):
                state = self.attempt.advance()
        if state == "cancelled":
            self.store.set_status(run_id, name, self.seed, "cancelled")
            self.shared.finish("cancelled", None, RunCancelled(f"run {run_id!r} was cancelled"))
            return None
        if state == "more":
            self.actor_ref.tell("step")
            return None
        result = self.attempt.result()
        self.store.set_status(run_id, name, self.seed, "done", Module.dump_state(result))
        # The subtree is then terminated from outside (see start_run): the driver idles.
        self.shared.finish("done", result, None)
        return None

    def _overrides(self) -> dict[str, Any]:
        """The run's settings: the app's LM through its pool, and through the journal."""
        overrides = self.app.pooled_overrides()
        lm = overrides.get("lm")
        if lm is not None and self.journal is not None:
            overrides["lm"] = JournaledLM(lm, self.journal)
        return overrides

    def on_stop(self) -> None:
        if self.attempt is not None:
            self.attempt.close()


class RunHandle:
    """A run started by :func:`start_run` (``app.optimize``)."""

    def __init__(self, app: RunHost, run_id: str, child_id: str, shared: _Shared) -> None:
        self._app = app
        self.run_id = run_id
        self.child_id = child_id
        self._shared = shared

    def progress(self) -> RunStatus:
        """Where the run is (a snapshot), with the tokens it has used so far."""
        return replace(self._shared.status, usage=self._shared.meter.total)

    def done(self) -> bool:
        return self._shared.future.done()

    def result(self, timeout: float) -> Module:
        """The compiled program; raises :class:`RunCancelled`, :class:`RunFailed`, or
        ``TimeoutError`` if it is not done within ``timeout`` seconds."""
        return self._shared.future.result(timeout=timeout)

    def cancel(self, timeout: float = 30.0) -> bool:
        """Stop the run (between steps, or inside an evaluation between examples); True
        once it has stopped within ``timeout``. Its finished steps stay checkpointed."""
        self._shared.cancel.set()
        try:
            self._shared.future.exception(timeout=timeout)
        except TimeoutError:
            return False
        return True

    def driver(self) -> Any:
        """The driver actor's current ref (None while it restarts): for fault injection."""
        return self._app.registry.whereis(_driver_name(self._app, self.run_id))

    def __repr__(self) -> str:
        return f"RunHandle({self.run_id!r}, {self._shared.status.state})"


def _driver_name(app: RunHost, run_id: str) -> str:
    return f"{app.name}/runs/{run_id}/driver"


def _runs(app: RunHost) -> supervisors.DynamicSupervisor:
    handle = app.root.supervisor("runs")
    assert isinstance(handle, supervisors.DynamicSupervisor)
    return handle


def start_run(
    app: RunHost,
    optimizer: RunnableOptimizer,
    student: Module,
    *,
    trainset: Sequence[Example],
    valset: Sequence[Example] | None = None,
    run_id: str | None = None,
    seed: int = 0,
    intensity: int = 3,
    period: float = 5.0,
    executor: Any = None,
) -> RunHandle:
    """Start (or resume, with the ``run_id`` of an earlier run) an optimization run as a
    supervised subtree of ``app``'s ``runs`` supervisor. See the module docstring.
    ``executor`` runs the steps' examples elsewhere (default: the app's Ray cluster if it
    was started with ``ray_address``, else local threads): the optimizer uses it (see
    _run_plan.py); the run only hands it on."""
    if not callable(getattr(optimizer, "start_attempt", None)):
        raise TypeError(
            f"app.optimize takes an optimizer (dspy_actors.optimizers: BootstrapFewShot, "
            f"MIPROv2, ...; or anything with start_attempt(setup), see runtime/_run_plan.py), "
            f"not {type(optimizer).__name__}"
        )
    run_id = run_id or uuid.uuid4().hex[:12]
    child_id = f"run-{run_id}"
    runs = _runs(app)
    with _active_lock:
        running = _active.get(app, {}).get(run_id)
    if running is not None and not running.future.done():
        raise ValueError(f"run {run_id!r} is already running in app {app.name!r}")
    if any(c.id == child_id for c in runs.which_children()):
        # A finished run whose subtree is still being removed: remove it now.
        try:
            runs.terminate_child(child_id)
        except supervisors.SupervisorError:
            pass  # removed in the meantime
    store = RunStore(app.stores.location("runs.sqlite3"))
    shared = _Shared(run_id)
    store.set_status(run_id, type(optimizer).__name__, seed, "running")
    driver = supervisors.ChildSpec(
        "driver",
        RunActor,
        args=(
            app, optimizer, student.deepcopy(), list(trainset),
            None if valset is None else list(valset), seed, shared, store, executor,
        ),
        restart="transient",
        shutdown=30.0,
        name=_driver_name(app, run_id),
    )  # fmt: skip
    spec = supervisors.Supervisor.child_spec(
        child_id,
        [driver],
        intensity=intensity,
        period=period,
        restart="temporary",
        registry=app.registry,
    )
    ref = runs.start_child(spec)

    def on_down(down: supervisors.Down) -> None:
        # The subtree is gone (finished and removed, app stopped, or gave up): whatever
        # has not finished by now never will.
        if shared.finish("failed", None, RunFailed(f"run {run_id!r} stopped: {down.reason}")):
            _log.warning("run stopped before finishing", run_id=run_id, reason=str(down.reason))
        store.close()

    supervisors.monitor(ref, on_down)

    def remove(_: Future[Module]) -> None:
        with _active_lock:
            _active.get(app, {}).pop(run_id, None)

        # Off the driver's thread: terminating the subtree waits for the driver to exit.
        def terminate() -> None:
            try:
                runs.terminate_child(child_id)
            except Exception:
                pass  # already gone (the app is stopping)

        try:
            app.executor.submit(terminate)
        except RuntimeError:
            pass  # the app's executor is shut down: the app is stopping anyway

    with _active_lock:
        _active.setdefault(app, {})[run_id] = shared
    shared.future.add_done_callback(remove)
    return RunHandle(app, run_id, child_id, shared)


def cancel_all(app: RunHost, timeout: float = 30.0) -> int:
    """Cancel every unfinished run of ``app`` and wait (up to ``timeout`` overall) until
    they stop; returns how many were cancelled. Call before stopping the app, so a driver
    busy with a long step stops at the next example rather than being abandoned."""
    with _active_lock:
        shared = [s for s in _active.get(app, {}).values() if not s.future.done()]
    for s in shared:
        s.cancel.set()
    deadline = time.monotonic() + timeout
    for s in shared:
        try:
            s.future.exception(timeout=max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            pass
    return len(shared)


def active_run_status(app: RunHost, run_id: str) -> RunStatus | None:
    """The status of ``app``'s run ``run_id`` while it is running (None once it is done
    or if there is no such run): what the console shows beside the run's events."""
    with _active_lock:
        shared = _active.get(app, {}).get(run_id)
    return None if shared is None else shared.status


def cancel_run(app: RunHost, run_id: str) -> bool:
    """Ask ``app``'s running run ``run_id`` to stop at its next example (as
    ``RunHandle.cancel`` does, without waiting); False if no such run is running."""
    with _active_lock:
        shared = _active.get(app, {}).get(run_id)
    if shared is None or shared.future.done():
        return False
    shared.cancel.set()
    return True
