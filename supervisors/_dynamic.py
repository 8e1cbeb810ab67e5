"""DynamicSupervisor and TaskSupervisor actors: children added at run time."""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Any

import pykka

from supervisors._actor import SupervisedActor
from supervisors._errors import MaxChildrenReached, SupervisorExited, TaskQueueFull
from supervisors._exit import ExitReason
from supervisors._spec import ChildSpec, RestartType, ShutdownType
from supervisors._supervisor import SupervisorActor, SupervisorOptions, _Child


class DynamicSupervisorActor(SupervisorActor):
    """one_for_one over children started with ``start_child``, at most ``max_children``.

    ``extra_args`` are prepended to every child's start args (Elixir's ``extra_arguments``).
    A child that exits for good (or is terminated) is removed, as in Elixir.
    """

    def __init__(
        self,
        options: SupervisorOptions,
        max_children: int | None = None,
        extra_args: tuple[Any, ...] = (),
    ) -> None:
        if max_children is not None and max_children < 0:
            raise ValueError(f"max_children must be >= 0 or None, got {max_children!r}")
        super().__init__((), replace(options, strategy="one_for_one"))
        self.max_children = max_children
        self.extra_args = tuple(extra_args)

    def _new_child(self, spec: ChildSpec) -> _Child:
        return _Child(spec, extra_args=self.extra_args)

    def api_start_child(self, spec: ChildSpec) -> pykka.ActorRef[Any]:
        self._check_room(1)
        return super().api_start_child(spec)

    def _check_room(self, count: int) -> None:
        if self.max_children is not None and len(self._children) + count > self.max_children:
            raise MaxChildrenReached(self.path, self.max_children)

    def _child_done(self, child: _Child, reason: ExitReason) -> None:
        self._children.pop(child.spec.id, None)

    def api_terminate_child(self, child_id: str) -> None:
        child = self._find(child_id)
        self._terminate(child)
        self._child_done(child, child.last_exit or ExitReason("shutdown"))


@dataclass(eq=False, slots=True)
class TaskRecord:
    """One submitted callable, its future, and the result of its last run."""

    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: Mapping[str, Any]
    future: Future[Any]
    restart: RestartType = "temporary"
    result: Any = None


class _Run:
    __slots__ = ()


_RUN = _Run()


class TaskActor(SupervisedActor):
    """Runs one task's callable once (in its own thread), then stops normally."""

    def __init__(self, record: TaskRecord) -> None:
        super().__init__()
        self.record = record

    def on_start(self) -> None:
        self.actor_ref.tell(_RUN)

    def on_receive(self, message: Any) -> Any:
        if message is _RUN:
            record = self.record
            record.result = record.fn(*record.args, **record.kwargs)
            self.stop()
            return None
        return super().on_receive(message)


class TaskSupervisorActor(DynamicSupervisorActor):
    """Supervises tasks: at most ``max_concurrency`` run at once, up to ``max_pending`` wait.

    A task's future gets the callable's result, or the exception it crashed with once it
    will not be restarted (temporary tasks never are; transient ones are re-run after a
    crash, within the supervisor's restart intensity), or :class:`SupervisorExited` if the
    supervisor stops first. No future is left unresolved.
    """

    def __init__(
        self,
        options: SupervisorOptions,
        max_concurrency: int,
        max_pending: int,
        task_shutdown: ShutdownType,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency!r}")
        super().__init__(options, max_children=None)
        self.max_concurrency = max_concurrency
        self.max_pending = max_pending
        self.task_shutdown = task_shutdown
        self._pending: deque[TaskRecord] = deque()
        self._records: dict[str, TaskRecord] = {}
        self._ids = itertools.count(1)

    def api_submit(self, record: TaskRecord) -> None:
        if record.restart not in ("temporary", "transient"):
            raise ValueError(
                f"task restart must be 'temporary' or 'transient', got {record.restart!r}"
            )
        if len(self._records) < self.max_concurrency:
            self._launch(record)
        elif len(self._pending) >= self.max_pending:
            raise TaskQueueFull(
                f"task supervisor {self.path!r}: {self.max_concurrency} tasks running and "
                f"{self.max_pending} waiting; try again later"
            )
        else:
            self._pending.append(record)

    def _launch(self, record: TaskRecord) -> None:
        task_id = f"task-{next(self._ids)}"
        spec = ChildSpec(
            task_id, TaskActor, (record,), restart=record.restart, shutdown=self.task_shutdown
        )
        self._records[task_id] = record
        try:
            super().api_start_child(spec)
        except Exception as error:
            del self._records[task_id]
            record.future.set_exception(error)

    def _child_done(self, child: _Child, reason: ExitReason) -> None:
        super()._child_done(child, reason)
        record = self._records.pop(child.spec.id, None)
        if record is not None:
            _resolve(record, reason, self.path)
        while self._pending and len(self._records) < self.max_concurrency:
            self._launch(self._pending.popleft())

    def _shutdown_children(self) -> None:
        super()._shutdown_children()
        for record in [*self._records.values(), *self._pending]:
            _resolve(record, None, self.path)
        self._records.clear()
        self._pending.clear()


def _resolve(record: TaskRecord, reason: ExitReason | None, supervisor: str) -> None:
    if record.future.done():
        return
    if reason is not None and reason.kind == "normal":
        record.future.set_result(record.result)
    elif reason is not None and reason.kind == "crash" and reason.exception is not None:
        record.future.set_exception(reason.exception)
    else:
        record.future.set_exception(SupervisorExited(supervisor, reason))
