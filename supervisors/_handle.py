"""Public handles: how a caller starts, inspects, changes and stops a supervisor.

A handle talks to its supervisor actor through asks with timeouts, and turns "the actor is
gone" into :class:`SupervisorExited` carrying the exit reason (for a root that gave up, a
:class:`RestartIntensityExceeded`), so whoever started a tree always learns why it ended.

Over 400 lines: one handle class per kind of supervisor, each method a bounded ask; they
share the exit-reason translation.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from typing import Any, Self

import pykka

from supervisors._actor import ask, kill, monitor, request_exit
from supervisors._dynamic import DynamicSupervisorActor, TaskRecord, TaskSupervisorActor
from supervisors._errors import ChildNotFound, StartError, SupervisorExited
from supervisors._exit import SHUTDOWN, Down, ExitReason
from supervisors._lifecycle import Lifecycle, lifecycle_of
from supervisors._registry import Registry, registry
from supervisors._spec import ChildSpec, RestartType, ShutdownType
from supervisors._supervisor import (
    ChildCounts,
    ChildInfo,
    Strategy,
    SupervisorActor,
    SupervisorOptions,
    _Api,
)
from supervisors._tree import TreeNode

ExitCallback = Callable[[ExitReason], None]


def _options(
    name: str,
    strategy: Strategy,
    intensity: int,
    period: float,
    registry_: Registry | None,
    clock: Callable[[], float] | None,
    seed: int | None,
) -> SupervisorOptions:
    return SupervisorOptions(
        name=name,
        strategy=strategy,
        intensity=intensity,
        period=period,
        registry=registry if registry_ is None else registry_,
        clock=time.monotonic if clock is None else clock,
        seed=seed,
    )


def _await_started(ref: pykka.ActorRef[Any], name: str, timeout: float) -> Lifecycle:
    lifecycle = lifecycle_of(ref)
    if not lifecycle.settled.wait(timeout):
        kill(ref)
        raise StartError(name, f"did not finish starting within {timeout:g} s")
    if not lifecycle.started:
        reason = lifecycle.reason
        if reason is not None and isinstance(reason.exception, StartError):
            raise reason.exception
        raise StartError(name, reason.exception if reason and reason.exception else str(reason))
    return lifecycle


class Supervisor:
    """Handle to a running supervisor (static children; see also DynamicSupervisor).

    Start a root with :meth:`start`; nest one with :meth:`child_spec`; reach a nested one
    with :meth:`supervisor`. Every call has a timeout (``call_timeout``).
    """

    _actor_class: type[SupervisorActor] = SupervisorActor

    def __init__(self, ref: pykka.ActorRef[Any], *, call_timeout: float = 60.0) -> None:
        """Wrap the ref of a running supervisor actor (``start`` does this for you)."""
        if not issubclass(ref.actor_class, self._actor_class):
            raise TypeError(f"{ref} is not a {self._actor_class.__name__}")
        self.ref = ref
        self.call_timeout = call_timeout
        self._lifecycle = lifecycle_of(ref)
        self.name: str = ref.actor_urn
        if ref.is_alive():
            try:
                self.name = self._call("name")
            except SupervisorExited:
                pass  # Died meanwhile: keep the urn as its name.

    @classmethod
    def _from_started(
        cls,
        ref: pykka.ActorRef[Any],
        name: str,
        start_timeout: float,
        call_timeout: float,
        on_exit: ExitCallback | None,
    ) -> Self:
        _await_started(ref, name, start_timeout)
        handle = cls(ref, call_timeout=call_timeout)
        if on_exit is not None:
            callback = on_exit
            monitor(ref, lambda down: callback(down.reason))
        return handle

    @classmethod
    def start(
        cls,
        children: Sequence[ChildSpec] = (),
        *,
        name: str = "supervisor",
        strategy: Strategy = "one_for_one",
        intensity: int = 3,
        period: float = 5.0,
        registry: Registry | None = None,
        clock: Callable[[], float] | None = None,
        seed: int | None = None,
        on_exit: ExitCallback | None = None,
        start_timeout: float = 60.0,
        call_timeout: float = 60.0,
    ) -> Self:
        """Start a supervisor and its children in order; return once all have started.

        Raises :class:`StartError` naming the child that failed (those already started are
        stopped first). ``on_exit`` is called with the supervisor's exit reason when it exits
        (for a root that exceeded its intensity: crash with RestartIntensityExceeded).
        """
        options = _options(name, strategy, intensity, period, registry, clock, seed)
        ref = SupervisorActor.start(list(children), options)
        return cls._from_started(ref, name, start_timeout, call_timeout, on_exit)

    @staticmethod
    def child_spec(
        id: str,
        children: Sequence[ChildSpec] = (),
        *,
        strategy: Strategy = "one_for_one",
        intensity: int = 3,
        period: float = 5.0,
        restart: RestartType = "permanent",
        shutdown: ShutdownType = "infinity",
        name: str | None = None,
        registry: Registry | None = None,
        clock: Callable[[], float] | None = None,
        start_timeout: float = 60.0,
        label: str | None = None,
    ) -> ChildSpec:
        """A ChildSpec that starts a nested supervisor (type ``supervisor``).

        ``name`` registers the nested supervisor's ref in ``registry``; ``label`` is the
        name it goes by in events and logs (default: ``id``).
        """
        options = _options(label or id, strategy, intensity, period, registry, clock, None)
        specs = list(children)
        return ChildSpec(
            id,
            lambda: SupervisorActor.start(specs, options),
            restart=restart,
            shutdown=shutdown,
            type="supervisor",
            name=name,
            start_timeout=start_timeout,
        )

    # State. ----------------------------------------------------------------------------

    @property
    def is_alive(self) -> bool:
        return self.ref.is_alive()

    @property
    def exit_reason(self) -> ExitReason | None:
        """Why the supervisor exited, or None while it runs."""
        return self._lifecycle.reason

    def wait(self, timeout: float) -> ExitReason | None:
        """Wait up to ``timeout`` s for the supervisor to exit; its reason, or None."""
        self._lifecycle.finished.wait(timeout)
        return self._lifecycle.reason

    def stop(self, timeout: float = 60.0) -> ExitReason:
        """Shut down: children stop in reverse start order, then the supervisor.

        Returns the exit reason (``shutdown``, or whatever it exited with before);
        TimeoutError if it has not finished within ``timeout`` seconds.
        """
        if not self._lifecycle.finished.is_set():
            request_exit(self.ref, SHUTDOWN)
        reason = self.wait(timeout)
        if reason is None:
            raise TimeoutError(f"supervisor {self.name!r} did not stop within {timeout:g} s")
        return reason

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # Calls. ----------------------------------------------------------------------------

    def _call(self, method: str, *args: Any, timeout: float | None = None) -> Any:
        try:
            return ask(
                self.ref,
                _Api(method, args),
                timeout=self.call_timeout if timeout is None else timeout,
            )
        except pykka.ActorDeadError:
            self._lifecycle.finished.wait(1.0)
            raise SupervisorExited(self.name, self._lifecycle.reason) from None

    def start_child(self, spec: ChildSpec) -> pykka.ActorRef[Any]:
        """Add a child at the end and start it (AlreadyStarted / AlreadyPresent / StartError)."""
        return self._call("start_child", spec)  # type: ignore[no-any-return]

    def start_children(
        self, specs: Iterable[ChildSpec], *, timeout: float | None = None
    ) -> list[pykka.ActorRef[Any]]:
        """Start many children in one message to the supervisor, in order; their refs.

        All or none: if one fails to start (any error :meth:`start_child` raises), the
        children this call already started are stopped again, in reverse order, and the
        error is raised. Starting 10,000 children this way costs about what starting as
        many plain Pykka actors does; one ``start_child`` each adds a round trip per child.
        ``timeout`` (default: the handle's ``call_timeout``) bounds the whole batch.
        """
        return self._call("start_children", tuple(specs), timeout=timeout)  # type: ignore[no-any-return]

    def terminate_child(self, child_id: str) -> None:
        """Stop a child per its ``shutdown``; its spec stays (unless temporary)."""
        self._call("terminate_child", child_id)

    def restart_child(self, child_id: str) -> pykka.ActorRef[Any]:
        """Start a terminated child again (ChildRunning / ChildRestarting / ChildNotFound)."""
        return self._call("restart_child", child_id)  # type: ignore[no-any-return]

    def delete_child(self, child_id: str) -> None:
        """Forget a terminated child's spec (ChildRunning / ChildRestarting / ChildNotFound)."""
        self._call("delete_child", child_id)

    def which_children(self) -> list[ChildInfo]:
        """Every child, in start order, with its live ref (None if not running)."""
        return self._call("which_children")  # type: ignore[no-any-return]

    def count_children(self) -> ChildCounts:
        return self._call("count_children")  # type: ignore[no-any-return]

    def child(self, child_id: str) -> pykka.ActorRef[Any] | None:
        """The live ref of a child now, or None if it is not running."""
        for info in self.which_children():
            if info.id == child_id:
                return info.ref
        return None

    def supervisor(self, child_id: str) -> Supervisor:
        """A handle to a running child supervisor (ChildNotFound if not running).

        The handle is of the child's kind: Supervisor, DynamicSupervisor or TaskSupervisor.
        """
        ref = self.child(child_id)
        if ref is None:
            raise ChildNotFound(child_id, self.name)
        for kind in (TaskSupervisor, DynamicSupervisor, Supervisor):
            if issubclass(ref.actor_class, kind._actor_class):
                return kind(ref, call_timeout=self.call_timeout)
        raise TypeError(f"child {child_id!r} of {self.name!r} is not a supervisor")

    def tree(self) -> TreeNode:
        """The live tree under this supervisor: ids, kinds, states, restarts, last exits."""
        state = "running" if self.is_alive else f"exited ({self.exit_reason})"
        return _collect(self.ref, self.name, state, 0, None, self.call_timeout)


def _collect(
    ref: pykka.ActorRef[Any] | None,
    node_id: str,
    state: str,
    restarts: int,
    last_exit: ExitReason | None,
    timeout: float,
) -> TreeNode:
    exit_text = None if last_exit is None else str(last_exit)
    if ref is None or not issubclass(ref.actor_class, SupervisorActor):
        return TreeNode(node_id, "worker", state, restarts, exit_text)
    try:
        strategy, infos, abandoned = ask(ref, _Api("describe"), timeout=timeout)
    except (pykka.ActorDeadError, pykka.Timeout):
        return TreeNode(node_id, "supervisor", "not responding", restarts, exit_text)
    children = [
        _collect(i.ref, i.id, i.state, i.restart_count, i.last_exit, timeout)
        if i.type == "supervisor"
        else TreeNode(i.id, "worker", i.state, i.restart_count, _text(i.last_exit))
        for i in infos
    ]
    children += [TreeNode(cid, "worker", "abandoned", 0, "killed") for cid in abandoned]
    return TreeNode(node_id, "supervisor", state, restarts, exit_text, strategy, tuple(children))


def _text(reason: ExitReason | None) -> str | None:
    return None if reason is None else str(reason)


class DynamicSupervisor(Supervisor):
    """Handle to a DynamicSupervisor: one_for_one, children added with ``start_child``."""

    _actor_class = DynamicSupervisorActor

    @classmethod
    def start(  # type: ignore[override]
        cls,
        *,
        name: str = "dynamic_supervisor",
        max_children: int | None = None,
        extra_args: tuple[Any, ...] = (),
        intensity: int = 3,
        period: float = 5.0,
        registry: Registry | None = None,
        clock: Callable[[], float] | None = None,
        seed: int | None = None,
        on_exit: ExitCallback | None = None,
        start_timeout: float = 60.0,
        call_timeout: float = 60.0,
    ) -> Self:
        options = _options(name, "one_for_one", intensity, period, registry, clock, seed)
        ref = DynamicSupervisorActor.start(options, max_children, tuple(extra_args))
        return cls._from_started(ref, name, start_timeout, call_timeout, on_exit)

    @staticmethod
    def child_spec(  # type: ignore[override]
        id: str,
        *,
        max_children: int | None = None,
        extra_args: tuple[Any, ...] = (),
        intensity: int = 3,
        period: float = 5.0,
        restart: RestartType = "permanent",
        shutdown: ShutdownType = "infinity",
        name: str | None = None,
        registry: Registry | None = None,
        clock: Callable[[], float] | None = None,
        label: str | None = None,
    ) -> ChildSpec:
        """A ChildSpec that starts a nested DynamicSupervisor (``label``: see Supervisor)."""
        options = _options(label or id, "one_for_one", intensity, period, registry, clock, None)
        return ChildSpec(
            id,
            lambda: DynamicSupervisorActor.start(options, max_children, tuple(extra_args)),
            restart=restart,
            shutdown=shutdown,
            type="supervisor",
            name=name,
        )


class TaskSupervisor(Supervisor):
    """Runs callables under supervision, each in its own actor; returns futures.

    ``max_concurrency`` tasks run at once; up to ``max_pending`` more wait in order;
    beyond that :meth:`submit` raises :class:`TaskQueueFull` at once.
    """

    _actor_class = TaskSupervisorActor

    @classmethod
    def start(  # type: ignore[override]
        cls,
        *,
        name: str = "task_supervisor",
        max_concurrency: int = 64,
        max_pending: int = 10_000,
        task_shutdown: ShutdownType = 5.0,
        intensity: int = 3,
        period: float = 5.0,
        clock: Callable[[], float] | None = None,
        on_exit: ExitCallback | None = None,
        start_timeout: float = 60.0,
        call_timeout: float = 60.0,
    ) -> Self:
        options = _options(name, "one_for_one", intensity, period, None, clock, None)
        ref = TaskSupervisorActor.start(options, max_concurrency, max_pending, task_shutdown)
        return cls._from_started(ref, name, start_timeout, call_timeout, on_exit)

    @staticmethod
    def child_spec(  # type: ignore[override]
        id: str,
        *,
        max_concurrency: int = 64,
        max_pending: int = 10_000,
        task_shutdown: ShutdownType = 5.0,
        intensity: int = 3,
        period: float = 5.0,
        restart: RestartType = "permanent",
        shutdown: ShutdownType = "infinity",
        name: str | None = None,
        clock: Callable[[], float] | None = None,
    ) -> ChildSpec:
        """A ChildSpec that starts a nested TaskSupervisor."""
        options = _options(id, "one_for_one", intensity, period, None, clock, None)
        return ChildSpec(
            id,
            lambda: TaskSupervisorActor.start(options, max_concurrency, max_pending, task_shutdown),
            restart=restart,
            shutdown=shutdown,
            type="supervisor",
            name=name,
        )

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Run ``fn(*args, **kwargs)`` as a temporary task; its future gets the outcome."""
        return self.submit_with(fn, args, kwargs)

    def submit_with(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        restart: RestartType = "temporary",
    ) -> Future[Any]:
        """Like :meth:`submit`, with ``restart="transient"`` to re-run a task that crashed."""
        future: Future[Any] = Future()
        self._call("submit", TaskRecord(fn, tuple(args), dict(kwargs or {}), future, restart))
        return future


__all__ = ["Down", "DynamicSupervisor", "Supervisor", "TaskSupervisor"]
