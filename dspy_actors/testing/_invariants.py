"""Invariants that prove nothing was lost: every call answered or failed clearly, none hung,
no thread leaked, the tree healthy again within a bound.

    ledger = CallLedger(qa, hang_after_s=30)
    ledger.run([{"question": q} for q in questions], concurrency=64)
    assert_all_accounted(ledger)           # sent == answered + failed, none hung, clear errors
    assert_tree_healthy(app, within_s=10)  # every node running, counts consistent

Each assertion raises ``AssertionError`` with a message listing exactly what is wrong.

Over 400 lines: the ledger and the assertions over it are read together when a load test
fails; each assertion is short.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import pykka

import supervisors
from dspy_actors.adapters import AdapterParseError
from dspy_actors.lm.errors import LMError
from dspy_actors.runtime._errors import RuntimeCallError

if TYPE_CHECKING:
    from dspy_actors.runtime.app import App

__all__ = [
    "CLEAR_ERRORS",
    "CallLedger",
    "CallOutcome",
    "assert_all_accounted",
    "assert_no_leaked_threads",
    "assert_tree_healthy",
    "thread_snapshot",
]

CLEAR_ERRORS: tuple[type[BaseException], ...] = (RuntimeCallError, LMError, AdapterParseError)
"""The errors a served call may end with that say what happened and where: the runtime's
(Overloaded, DeadlineExceeded, ModuleCrashed, ModuleUnavailable, DeadLettered), the LM's
(CircuitOpen, RateLimited, ServerError, ...) and adapter parse errors."""

_ASK_SECONDS = 5.0

Status = Literal["answered", "failed", "hung", "pending"]


@dataclass(slots=True, eq=False)
class CallOutcome:
    """One call the ledger sent: its inputs, status, result or error and latency."""

    index: int
    inputs: Mapping[str, Any]
    started: float
    status: Status = "pending"
    result: Any = None
    error: BaseException | None = None
    latency: float | None = None


class CallLedger:
    """Wraps a program handle and records every call's outcome.

    A call is *answered* (it returned), *failed* (it raised; the error is kept) or *hung*
    (not finished within ``hang_after_s`` of being sent). Calls go out through
    :meth:`call` (blocking, from any thread), :meth:`submit` (the handle's executor) or
    :meth:`run` (many, at a bounded concurrency). :meth:`settle` waits for calls still
    out and marks the late ones hung. Thread-safe.
    """

    def __init__(self, handle: Any, *, hang_after_s: float = 60.0) -> None:
        self.handle = handle
        self.hang_after_s = hang_after_s
        self._lock = threading.Lock()
        self._outcomes: list[CallOutcome] = []
        self._futures: list[tuple[CallOutcome, Future[Any]]] = []

    # Sending. --------------------------------------------------------------------------

    def _new(self, inputs: Mapping[str, Any]) -> CallOutcome:
        with self._lock:
            outcome = CallOutcome(len(self._outcomes), dict(inputs), time.monotonic())
            self._outcomes.append(outcome)
            return outcome

    def _record(self, outcome: CallOutcome, result: Any, error: BaseException | None) -> None:
        with self._lock:
            if outcome.status != "pending":
                return  # already judged hung: a late answer does not undo that
            outcome.latency = time.monotonic() - outcome.started
            if outcome.latency > self.hang_after_s:
                outcome.status, outcome.error = "hung", error
            elif error is None:
                outcome.status, outcome.result = "answered", result
            else:
                outcome.status, outcome.error = "failed", error

    def call(self, **inputs: Any) -> Any:
        """Call the program (blocking) and record the outcome; re-raises its error."""
        outcome = self._new(inputs)
        try:
            result = self.handle.call_with(inputs)
        except Exception as error:
            self._record(outcome, None, error)
            raise
        self._record(outcome, result, None)
        return result

    def submit(self, **inputs: Any) -> Future[Any]:
        """Submit a call through the handle; its future, recorded when it completes."""
        outcome = self._new(inputs)
        try:
            future: Future[Any] = self.handle.submit(**inputs)
        except Exception as error:
            self._record(outcome, None, error)
            failed: Future[Any] = Future()
            failed.set_exception(error)
            return failed
        with self._lock:
            self._futures.append((outcome, future))

        def done(f: Future[Any]) -> None:
            error = f.exception() if not f.cancelled() else RuntimeError("cancelled")
            self._record(outcome, None if error is not None else f.result(), error)

        future.add_done_callback(done)
        return future

    def run(self, inputs: Iterable[Mapping[str, Any]], *, concurrency: int = 16) -> None:
        """Call the program once per input, at most ``concurrency`` in flight at once (in
        threads of the ledger's own), and wait for all (each bounded by ``hang_after_s``)."""
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency!r}")
        pending = iter(inputs)  # consumed lazily: a generator may decide when to stop
        lock = threading.Lock()

        def worker() -> None:
            while True:
                with lock:
                    item = next(pending, None)
                if item is None:
                    return
                try:
                    self.call(**item)
                except Exception:
                    pass  # recorded by call()

        threads = [
            threading.Thread(target=worker, name=f"ledger-{i}", daemon=True)
            for i in range(concurrency)
        ]
        for thread in threads:
            thread.start()
        self._join(threads)

    def _join(self, threads: Sequence[threading.Thread]) -> None:
        # Every call ends by its deadline; the slack covers one last call started late.
        for thread in threads:
            while thread.is_alive():
                thread.join(1.0)
                self._mark_hung()
                if thread.is_alive() and self._all_late():
                    return

    def _all_late(self) -> bool:
        with self._lock:
            return all(o.status != "pending" for o in self._outcomes)

    def _mark_hung(self) -> None:
        now = time.monotonic()
        with self._lock:
            for outcome in self._outcomes:
                if outcome.status == "pending" and now - outcome.started > self.hang_after_s:
                    outcome.status = "hung"

    def settle(self) -> None:
        """Wait for every call still out, up to ``hang_after_s`` after it was sent; the
        ones not finished by then are marked hung."""
        while True:
            with self._lock:
                pending = [o for o in self._outcomes if o.status == "pending"]
            if not pending:
                return
            oldest = min(o.started for o in pending)
            wait = max(0.0, oldest + self.hang_after_s - time.monotonic()) + 0.01
            time.sleep(min(wait, 0.05))
            self._mark_hung()

    # Reading. --------------------------------------------------------------------------

    @property
    def outcomes(self) -> list[CallOutcome]:
        with self._lock:
            return list(self._outcomes)

    def _count(self, status: Status) -> int:
        with self._lock:
            return sum(1 for o in self._outcomes if o.status == status)

    @property
    def sent(self) -> int:
        with self._lock:
            return len(self._outcomes)

    @property
    def answered(self) -> int:
        return self._count("answered")

    @property
    def failed(self) -> int:
        return self._count("failed")

    @property
    def hung(self) -> int:
        return self._count("hung")

    @property
    def pending(self) -> int:
        return self._count("pending")

    def errors(self) -> Counter[str]:
        """Failures by error type name."""
        with self._lock:
            return Counter(type(o.error).__name__ for o in self._outcomes if o.error is not None)

    def latencies(self) -> list[float]:
        """Latencies (seconds) of the answered calls, sorted."""
        with self._lock:
            return sorted(
                o.latency
                for o in self._outcomes
                if o.status == "answered" and o.latency is not None
            )

    def percentile(self, q: float) -> float | None:
        """The ``q`` quantile (0..1) of answered calls' latencies, or None if none."""
        values = self.latencies()
        if not values:
            return None
        return values[min(len(values) - 1, int(q * len(values)))]

    def summary(self) -> str:
        p50, p99 = self.percentile(0.5), self.percentile(0.99)
        latency = "" if p50 is None or p99 is None else f", p50 {p50:.3f}s p99 {p99:.3f}s"
        errors = dict(self.errors())
        return (
            f"sent {self.sent}: answered {self.answered}, failed {self.failed} {errors}, "
            f"hung {self.hung}, pending {self.pending}{latency}"
        )


# Assertions. --------------------------------------------------------------------------------


def assert_all_accounted(
    ledger: CallLedger,
    *,
    clear_errors: tuple[type[BaseException], ...] = CLEAR_ERRORS,
    max_failed: int | None = None,
) -> None:
    """Every call sent was answered or failed with a clear error; none hung.

    Waits for calls still out first (:meth:`CallLedger.settle`). ``max_failed`` also bounds
    how many may fail (None: any number, as long as each failure is clear).
    """
    ledger.settle()
    problems: list[str] = []
    sent, answered, failed, hung = ledger.sent, ledger.answered, ledger.failed, ledger.hung
    if sent != answered + failed + hung:
        problems.append(f"counts do not reconcile: sent {sent} != {answered} + {failed} + {hung}")
    if hung:
        examples = [o for o in ledger.outcomes if o.status == "hung"][:5]
        problems.append(
            f"{hung} call(s) hung (not finished within {ledger.hang_after_s:g} s), e.g. "
            + ", ".join(f"#{o.index} {dict(o.inputs)!r}" for o in examples)
        )
    unclear = [
        o for o in ledger.outcomes if o.status == "failed" and not isinstance(o.error, clear_errors)
    ]
    if unclear:
        kinds = Counter(type(o.error).__name__ for o in unclear)
        example = unclear[0]
        problems.append(
            f"{len(unclear)} call(s) failed with an unclear error {dict(kinds)}; e.g. "
            f"#{example.index}: {type(example.error).__name__}: {example.error}"
        )
    if max_failed is not None and failed > max_failed:
        problems.append(f"{failed} call(s) failed, more than {max_failed}: {dict(ledger.errors())}")
    if problems:
        raise AssertionError(
            "calls not all accounted for:\n  - "
            + "\n  - ".join(problems)
            + f"\n({ledger.summary()})"
        )


def thread_snapshot() -> set[threading.Thread]:
    """The live threads now (pass it as ``before`` to :func:`assert_no_leaked_threads`)."""
    return {t for t in threading.enumerate() if t.is_alive()}


def assert_no_leaked_threads(
    before: Iterable[threading.Thread],
    after: Iterable[threading.Thread] | None = None,
    *,
    grace: float = 5.0,
    allow_prefixes: Sequence[str] = (),
) -> None:
    """No thread alive now (or in ``after``) that was not in ``before``, once ``grace``
    seconds have passed for threads that are still stopping."""
    known = set(before)
    deadline = time.monotonic() + grace
    while True:
        current = set(after) if after is not None else thread_snapshot()
        extra = sorted(
            t.name
            for t in current - known
            if t.is_alive() and not t.name.startswith(tuple(allow_prefixes))
        )
        if not extra or time.monotonic() >= deadline:
            break
        after = None  # from here on, look at the live threads again
        time.sleep(0.02)
    if extra:
        raise AssertionError(
            f"{len(extra)} thread(s) leaked (still alive after {grace:g} s): {extra}"
        )


@dataclass(frozen=True, slots=True)
class _NodeProblem:
    path: str
    problem: str


def _check_supervisor(ref: pykka.ActorRef[Any], path: str) -> list[_NodeProblem]:
    problems: list[_NodeProblem] = []
    try:
        # Wrapping the ref asks the supervisor its name: that ask can time out too.
        handle = supervisors.Supervisor(ref, call_timeout=_ASK_SECONDS)
        infos = handle.which_children()
        counts = handle.count_children()
    except (supervisors.SupervisorExited, pykka.ActorDeadError, pykka.Timeout) as error:
        return [_NodeProblem(path, f"not responding: {type(error).__name__}: {error}")]
    running = [i for i in infos if i.state == "running"]
    for info in infos:
        if info.state != "running":
            problems.append(_NodeProblem(f"{path}/{info.id}", info.state))
        elif info.ref is None or info.ref.actor_stopped.is_set():
            problems.append(
                _NodeProblem(f"{path}/{info.id}", "marked running but its actor is dead")
            )
    if counts.specs != len(infos):
        problems.append(_NodeProblem(path, f"count_children specs {counts.specs} != {len(infos)}"))
    if counts.active != len(running):
        problems.append(
            _NodeProblem(path, f"count_children active {counts.active} != {len(running)}")
        )
    if counts.supervisors + counts.workers != counts.active:
        problems.append(
            _NodeProblem(
                path,
                f"running supervisors {counts.supervisors} + workers {counts.workers} "
                f"!= active {counts.active}",
            )
        )
    if counts.restarting:
        problems.append(_NodeProblem(path, f"{counts.restarting} child(ren) restarting"))
    if counts.abandoned:
        problems.append(_NodeProblem(path, f"{counts.abandoned} abandoned child thread(s)"))
    for info in running:
        if info.type == "supervisor" and info.ref is not None:
            problems.extend(_check_supervisor(info.ref, f"{path}/{info.id}"))
    return problems


def assert_tree_healthy(
    app: App, within_s: float = 10.0, *, poll_s: float = 0.05
) -> supervisors.TreeNode:
    """Within ``within_s`` seconds, the app's root is alive, every node of its tree is
    running, nothing is restarting or abandoned, and each supervisor's counts agree with its
    children. Returns the healthy tree; raises AssertionError listing the bad nodes (and the
    rendered tree) otherwise."""
    deadline = time.monotonic() + within_s
    while True:
        if not app.root.is_alive:
            problems = [_NodeProblem(app.name, f"the root exited: {app.root.exit_reason}")]
        else:
            # A short ask timeout: a stuck supervisor is reported, not waited on for a minute.
            problems = _check_supervisor(app.root.ref, app.name)
        if not problems:
            return app.tree()
        if time.monotonic() >= deadline or not app.root.is_alive:
            break
        time.sleep(poll_s)
    try:
        rendered = app.tree().render()
    except Exception as error:  # the tree itself may be what is broken
        rendered = f"(tree unavailable: {error!r})"
    listing = "\n  - ".join(f"{p.path}: {p.problem}" for p in problems)
    raise AssertionError(
        f"the tree of {app.name!r} is not healthy after {within_s:g} s:\n  - {listing}\n{rendered}"
    )
