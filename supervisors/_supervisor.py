"""The supervisor actor: OTP's one_for_one / one_for_all / rest_for_one semantics on Pykka.

A supervisor is itself a supervised actor, so a tree of them escalates exactly as in OTP: a
supervisor that exceeds its restart intensity stops its children (in reverse start order)
and crashes with :class:`RestartIntensityExceeded`, and its parent's strategy applies.

All of a supervisor's decisions happen in its own thread, one message at a time: child exits
arrive as messages (from monitors), API calls arrive as asks. It waits on its children only
while starting or stopping them (each wait bounded by the child's ``start_timeout`` or
``shutdown``), as OTP's supervisor does.

Over 400 lines: OTP's supervisor is one actor with one loop of decisions (start, restart,
stop, intensity); split, a decision's state would be spread out.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import pykka

from supervisors._actor import SupervisedActor, kill, request_exit
from supervisors._errors import (
    AlreadyPresent,
    AlreadyStarted,
    ChildNotFound,
    ChildRestarting,
    ChildRunning,
    RestartIntensityExceeded,
    StartError,
)
from supervisors._events import emit
from supervisors._exit import KILLED, SHUTDOWN, Down, ExitReason
from supervisors._intensity import RestartIntensity
from supervisors._lifecycle import Lifecycle, lifecycle_of
from supervisors._registry import Registry, registry
from supervisors._spec import ChildSpec, ChildType, RestartType

Strategy = Literal["one_for_one", "one_for_all", "rest_for_one"]
STRATEGIES: tuple[str, ...] = ("one_for_one", "one_for_all", "rest_for_one")
ChildState = Literal["running", "restarting", "terminated"]

# While waiting on a child with shutdown="infinity", report it this often.
_INFINITY_REPORT_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class ChildInfo:
    """One row of ``which_children``: a child as its supervisor sees it now."""

    id: str
    ref: pykka.ActorRef[Any] | None
    type: ChildType
    state: ChildState
    restart: RestartType
    restart_count: int
    last_exit: ExitReason | None


@dataclass(frozen=True, slots=True)
class ChildCounts:
    """``count_children``: specs, running children by type, restarting and abandoned ones."""

    specs: int
    active: int
    supervisors: int
    workers: int
    restarting: int
    abandoned: int


@dataclass(slots=True)
class _Child:
    spec: ChildSpec
    extra_args: tuple[Any, ...] = ()
    ref: pykka.ActorRef[Any] | None = None
    lifecycle: Lifecycle | None = None
    state: ChildState = "terminated"
    restart_count: int = 0
    last_exit: ExitReason | None = None
    started_at: float = 0.0
    consecutive_crashes: int = 0

    def info(self) -> ChildInfo:
        return ChildInfo(
            self.spec.id,
            self.ref,
            self.spec.type,
            self.state,
            self.spec.restart,
            self.restart_count,
            self.last_exit,
        )


@dataclass(slots=True)
class _Abandoned:
    child_id: str
    lifecycle: Lifecycle
    since: float


# Messages. Plain frozen dataclasses: they are data, never shared mutable state.


@dataclass(frozen=True, slots=True)
class _ChildExited:
    child_id: str
    actor_urn: str
    reason: ExitReason


@dataclass(frozen=True, slots=True)
class _RestartDue:
    child_ids: tuple[str, ...]
    token: int


@dataclass(frozen=True, slots=True)
class _Api:
    method: str
    args: tuple[Any, ...] = ()


@dataclass(frozen=True, slots=True)
class SupervisorOptions:
    """Settings shared by every supervisor kind."""

    name: str = "supervisor"
    strategy: Strategy = "one_for_one"
    intensity: int = 3
    period: float = 5.0
    registry: Registry = field(default=registry)
    clock: Callable[[], float] = time.monotonic
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(
                f"supervisor {self.name!r}: strategy must be one of {STRATEGIES}, "
                f"got {self.strategy!r}"
            )


def should_restart(restart: RestartType, reason: ExitReason) -> bool:
    """OTP's rule: permanent always, transient on abnormal exits, temporary never."""
    if restart == "permanent":
        return True
    if restart == "transient":
        return reason.abnormal
    return False


class SupervisorActor(SupervisedActor):
    """A static supervisor: children given up front, started in order, stopped in reverse."""

    # The supervisor answers its API through asks; errors there are the caller's, not crashes.
    crash_on_ask_error = False

    def __init__(self, children: Sequence[ChildSpec], options: SupervisorOptions) -> None:
        super().__init__()
        self.options = options
        self.path = options.name
        self._intensity = RestartIntensity(options.intensity, options.period, options.clock)
        self._rng = random.Random(options.seed)
        self._children: dict[str, _Child] = {}
        for spec in children:
            if not isinstance(spec, ChildSpec):
                raise TypeError(
                    f"supervisor {self.path!r}: children must be ChildSpec, got {spec!r}"
                )
            if spec.id in self._children:
                raise ValueError(f"supervisor {self.path!r}: duplicate child id {spec.id!r}")
            self._children[spec.id] = _Child(spec)
        self._abandoned: list[_Abandoned] = []
        # Pending restarts by token; None for a restart already sent as a message.
        self._timers: dict[int, threading.Timer | None] = {}
        self._tokens = itertools.count(1)

    # Lifecycle hooks. ---------------------------------------------------------------

    def on_start(self) -> None:
        started: list[_Child] = []
        for child in list(self._children.values()):
            try:
                self._start(child)
            except StartError:
                for done in reversed(started):
                    self._terminate(done)
                raise
            started.append(child)
        emit("supervisor_started", self.path)

    def on_stop(self) -> None:
        self._shutdown_children()
        emit("supervisor_stopped", self.path, reason=SHUTDOWN)

    def on_failure(self, *_exc_info: object) -> None:
        self._shutdown_children()

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, _ChildExited):
            self._child_exited(message)
        elif isinstance(message, _RestartDue):
            if message.token in self._timers:
                del self._timers[message.token]
                self._restart_group(message.child_ids)
        elif isinstance(message, _Api):
            return getattr(self, "api_" + message.method)(*message.args)
        else:
            return super().on_receive(message)
        return None

    # Starting and stopping children. ----------------------------------------------------

    def _start(self, child: _Child) -> pykka.ActorRef[Any]:
        spec = child.spec
        try:
            ref = spec.start_actor(child.extra_args)
        except Exception as exc:
            raise StartError(spec.id, exc) from exc
        try:
            lifecycle = lifecycle_of(ref)
        except TypeError as exc:
            ref.stop(block=False)
            raise StartError(spec.id, exc) from exc
        self_ref = self.actor_ref
        child_id, urn = spec.id, ref.actor_urn

        def report_exit(down: Down) -> None:
            try:
                self_ref.tell(_ChildExited(child_id, urn, down.reason))
            except pykka.ActorDeadError:
                pass  # We are gone too; our own exit already stopped our children.

        lifecycle.add_monitor(report_exit)
        if not lifecycle.settled.wait(spec.start_timeout):
            kill(ref)
            self._abandon(spec.id, lifecycle)
            raise StartError(spec.id, f"on_start did not finish within {spec.start_timeout:g} s")
        if not lifecycle.started:
            reason = lifecycle.reason
            cause = reason.exception if reason and reason.exception else str(reason)
            raise StartError(spec.id, cause)
        child.ref, child.lifecycle, child.state = ref, lifecycle, "running"
        child.started_at = self.options.clock()
        if spec.name is not None:
            self.options.registry.register(spec.name, ref)
        emit("child_started", self.path, spec.id, restart_count=child.restart_count)
        return ref

    def _terminate(self, child: _Child) -> None:
        """Stop a running child per its ``shutdown``; abandon it if it does not stop in time."""
        ref, lifecycle = child.ref, child.lifecycle
        child.ref, child.lifecycle, child.state = None, None, "terminated"
        if ref is None or lifecycle is None:
            return
        if child.spec.name is not None:
            self.options.registry.unregister(child.spec.name, ref)
        shutdown = child.spec.shutdown
        if shutdown == "brutal_kill":
            kill(ref)
            child.last_exit = lifecycle.reason or KILLED
            if not lifecycle.finished.is_set():
                self._abandon(child.spec.id, lifecycle)
        else:
            request_exit(ref, SHUTDOWN)
            if shutdown == "infinity":
                while not lifecycle.finished.wait(_INFINITY_REPORT_SECONDS):
                    emit("child_terminated", self.path, child.spec.id, reason="still stopping")
            elif not lifecycle.finished.wait(float(shutdown)):  # type: ignore[arg-type]
                lifecycle.exit_requested = KILLED
                self._abandon(child.spec.id, lifecycle)
            child.last_exit = lifecycle.reason or KILLED
        emit("child_terminated", self.path, child.spec.id, reason=child.last_exit)

    def _abandon(self, child_id: str, lifecycle: Lifecycle) -> None:
        self._abandoned.append(_Abandoned(child_id, lifecycle, time.monotonic()))
        emit(
            "child_abandoned",
            self.path,
            child_id,
            reason="did not stop in time; its thread is left running (Python cannot kill it)",
        )

    def _live_abandoned(self) -> list[_Abandoned]:
        self._abandoned = [a for a in self._abandoned if not a.lifecycle.finished.is_set()]
        return self._abandoned

    def _shutdown_children(self) -> None:
        timers = [t for t in self._timers.values() if t is not None]
        self._timers.clear()
        for timer in timers:
            timer.cancel()
        for timer in timers:
            timer.join(timeout=1.0)
        for child in reversed(list(self._children.values())):
            if child.ref is not None:
                self._terminate(child)
            child.state = "terminated"

    # Reacting to exits. -----------------------------------------------------------------

    def _child_exited(self, message: _ChildExited) -> None:
        child = self._children.get(message.child_id)
        if child is None or child.ref is None or child.ref.actor_urn != message.actor_urn:
            return  # Stale: a child we already terminated or replaced.
        if child.spec.name is not None:
            self.options.registry.unregister(child.spec.name, child.ref)
        child.ref, child.lifecycle, child.state = None, None, "terminated"
        child.last_exit = message.reason
        emit("child_exited", self.path, child.spec.id, message.reason, child.restart_count)
        if not should_restart(child.spec.restart, message.reason):
            self._child_done(child, message.reason)
            return
        if not self._intensity.record():
            self._escalate(child.spec.id)
        self._restart_after_exit(child)

    def _child_done(self, child: _Child, reason: ExitReason) -> None:
        """A child exited and will not be restarted: temporary specs are forgotten."""
        if child.spec.restart == "temporary":
            del self._children[child.spec.id]

    def _restart_after_exit(self, child: _Child) -> None:
        order = list(self._children)
        index = order.index(child.spec.id)
        strategy = self.options.strategy
        if strategy == "one_for_one":
            group = [child.spec.id]
        else:
            group = order if strategy == "one_for_all" else order[index:]
            for other_id in reversed(group):
                other = self._children[other_id]
                if other is not child and other.ref is not None:
                    self._terminate(other)
                    if other.spec.restart == "temporary":
                        del self._children[other_id]
            group = [cid for cid in group if cid in self._children]
        now = self.options.clock()
        delay = 0.0
        backoff = child.spec.backoff
        if backoff is not None:
            if now - child.started_at >= backoff.reset_seconds:
                child.consecutive_crashes = 0
            child.consecutive_crashes += 1
            delay = backoff.delay(child.consecutive_crashes, self._rng)
        for cid in group:
            self._children[cid].state = "restarting"
        self._schedule_restart(tuple(group), delay)

    def _schedule_restart(self, child_ids: tuple[str, ...], delay: float) -> None:
        token = next(self._tokens)
        if delay <= 0:
            self._timers[token] = None
            self.actor_ref.tell(_RestartDue(child_ids, token))
            return
        self_ref = self.actor_ref

        def due() -> None:
            try:
                self_ref.tell(_RestartDue(child_ids, token))
            except pykka.ActorDeadError:
                pass  # Stopped while we waited: nothing to restart.

        timer = threading.Timer(delay, due)
        timer.name = f"supervisor-backoff-{self.path}"
        timer.daemon = True
        self._timers[token] = timer
        timer.start()

    def _restart_group(self, child_ids: tuple[str, ...]) -> None:
        for position, cid in enumerate(child_ids):
            child = self._children.get(cid)
            if child is None or child.state != "restarting":
                continue  # Terminated or deleted by an API call meanwhile.
            try:
                self._start(child)
            except StartError as error:
                emit("restart_failed", self.path, cid, error.cause, child.restart_count)
                if not self._intensity.record():
                    self._escalate(cid)
                backoff = child.spec.backoff
                delay = 0.0
                if backoff is not None:
                    child.consecutive_crashes += 1
                    delay = backoff.delay(child.consecutive_crashes, self._rng)
                self._schedule_restart(child_ids[position:], delay)
                return
            child.restart_count += 1
            emit("child_restarted", self.path, cid, restart_count=child.restart_count)

    def _escalate(self, child_id: str) -> None:
        error = RestartIntensityExceeded(
            self.path, self.options.intensity, self.options.period, child_id
        )
        emit("escalated", self.path, child_id, error)
        self._shutdown_children()
        raise error

    # The API (asked through supervisors.Supervisor handles). ---------------------------

    def api_start_child(self, spec: ChildSpec) -> pykka.ActorRef[Any]:
        existing = self._children.get(spec.id)
        if existing is not None:
            if existing.ref is not None:
                raise AlreadyStarted(spec.id)
            raise AlreadyPresent(spec.id)
        child = self._new_child(spec)
        self._children[spec.id] = child
        try:
            return self._start(child)
        except StartError:
            del self._children[spec.id]
            raise

    def api_start_children(self, specs: tuple[ChildSpec, ...]) -> list[pykka.ActorRef[Any]]:
        """Start ``specs`` in order, all or none: a failure stops the ones this call started."""
        seen: set[str] = set()
        for spec in specs:
            if not isinstance(spec, ChildSpec):
                raise TypeError(f"supervisor {self.path!r}: expected ChildSpec, got {spec!r}")
            if spec.id in seen:
                raise ValueError(
                    f"supervisor {self.path!r}: child id {spec.id!r} appears twice in the batch"
                )
            seen.add(spec.id)
        self._check_room(len(specs))
        refs: list[pykka.ActorRef[Any]] = []
        try:
            for spec in specs:
                refs.append(self.api_start_child(spec))
        except Exception:
            for spec in reversed(specs[: len(refs)]):
                child = self._children.pop(spec.id, None)
                if child is not None:
                    self._terminate(child)
            raise
        return refs

    def _check_room(self, count: int) -> None:
        """Raise if ``count`` more children would exceed a limit (DynamicSupervisor's)."""

    def _new_child(self, spec: ChildSpec) -> _Child:
        return _Child(spec)

    def _find(self, child_id: str) -> _Child:
        child = self._children.get(child_id)
        if child is None:
            raise ChildNotFound(child_id, self.path)
        return child

    def api_terminate_child(self, child_id: str) -> None:
        child = self._find(child_id)
        self._terminate(child)
        if child.spec.restart == "temporary":
            del self._children[child_id]

    def api_restart_child(self, child_id: str) -> pykka.ActorRef[Any]:
        child = self._find(child_id)
        if child.state == "running":
            raise ChildRunning(child_id)
        if child.state == "restarting":
            raise ChildRestarting(child_id)
        return self._start(child)

    def api_delete_child(self, child_id: str) -> None:
        child = self._find(child_id)
        if child.state == "running":
            raise ChildRunning(child_id)
        if child.state == "restarting":
            raise ChildRestarting(child_id)
        del self._children[child_id]

    def api_which_children(self) -> list[ChildInfo]:
        return [child.info() for child in self._children.values()]

    def api_count_children(self) -> ChildCounts:
        running = [c for c in self._children.values() if c.state == "running"]
        sups = sum(1 for c in running if c.spec.type == "supervisor")
        return ChildCounts(
            specs=len(self._children),
            active=len(running),
            supervisors=sups,
            workers=len(running) - sups,
            restarting=sum(1 for c in self._children.values() if c.state == "restarting"),
            abandoned=len(self._live_abandoned()),
        )

    def api_name(self) -> str:
        return self.path

    def api_describe(self) -> tuple[str, list[ChildInfo], list[str]]:
        """Strategy, children and the ids of abandoned children still running (for trees)."""
        return (
            self.options.strategy,
            self.api_which_children(),
            [a.child_id for a in self._live_abandoned()],
        )
