"""The LM pool: the slots that make LM requests, and the dispatch between them.

A slot runs one request at a time. Its host is either an event loop (``runtime._lm_loop``,
the default: ``lm_max_in_flight`` slots over ``lm_loops`` loops, a request in flight
costing a socket and a task, not a thread) or, with ``lm_processes=N``, a worker process
(``runtime._lm_process``); both are supervised actors of one shape (``runtime._lm_host``).
The dispatcher below treats every slot alike.

Module actors never wait on the LM: they hand an :class:`LMRequest` to the pool and go on
serving; the request's future is completed by a slot's host, later. Flow control is per
deployment (an LM's provider + endpoint + model):

- a bounded queue: past ``max_queue`` waiting requests, new ones fail fast (``Overloaded``);
- a circuit breaker per deployment: while it is open, requests go to the next fallback
  deployment, or fail fast with ``CircuitOpen``;
- an optional rate limiter per deployment;
- a host that ends without answering (its actor crashed or stopped) withdraws its slots;
  their requests are retried once on another slot (an LM completion is safe to repeat),
  then failed clearly (:class:`LMWorkerCrashed`).

The hot path (hand a request to an idle slot; a slot takes the next queued request when it
finishes) is a short critical section in :class:`Dispatcher`, run by the sending and the
finishing threads themselves: it costs no extra message hop. The :class:`LMRouter` actor
owns the dispatcher's lifetime: it wakes the queue when a rate limit allows and, when it
restarts, fails what was queued. The number of slots is the pool's concurrency; past it and
``max_queue`` waiting, a request fails at once with :class:`LMOverloaded`, before any
breaker is asked. The duration a breaker judges starts when a slot takes the request, so
time queued here is never a slow call.

Every request takes the same path: sender -> ``Dispatcher.submit`` -> a slot -> its host
answers the reply future. (LM worker threads, ``lm_workers=N``, and a caller's thread
running its own request on an idle worker thread's slot, "lending", were removed: measured
against the event loops both were slower; docs/ARCHITECTURE.md says more.)

Over 400 lines: the dispatcher, its slots, the attempt a slot runs (``LMAttempt``) and
``PooledLM`` share Work and Slot and change together.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

import pykka

import supervisors
from dspy_actors import redaction
from dspy_actors.lm._breaker import CircuitBreaker, CircuitOpen, Permit
from dspy_actors.lm._lm import LM
from dspy_actors.lm._rate_limit import RateLimiter
from dspy_actors.lm._retry_listener import retry_listener
from dspy_actors.lm.errors import LMError
from dspy_actors.runtime._call_stats import LMCounts
from dspy_actors.runtime._context import CallContext, capture, restored
from dspy_actors.runtime._errors import DeadlineExceeded, ModuleUnavailable, Overloaded
from dspy_actors.runtime._events import LMEnd, LMRetry, LMStart
from dspy_actors.runtime._futures import reject, resolve
from dspy_actors.runtime._messages import LMRequest

if TYPE_CHECKING:
    from dspy_actors.lm._lm import CacheMiss

# Errors that say the deployment is unhealthy (the breaker counts them); others, such as a
# bad request, are the caller's problem and must not open the breaker.
_UNHEALTHY = (
    "ServerError",
    "LMTimeout",
    "LMConnectionError",
    "MalformedResponse",
    "RateLimited",
    "LMForwardError",  # a custom LM's forward crashed (lm/_base_lm.py)
)


def deployment_key(lm: LM) -> str:
    """Identifies a deployment: two LMs with the same provider, endpoint and model share it."""
    return f"{lm.provider}:{lm.api_base}:{lm.model_name}"


class LMWorkerCrashed(LMError):
    """What ran the request (an LM event loop, or a worker process with ``lm_processes``)
    ended twice before answering it: retried once on another slot, then failed with this."""


class LMOverloaded(Overloaded):
    """This process's own LM bound is reached (local overload, not the provider's): every
    worker slot is busy and the queue behind them is full. Decided before any circuit
    breaker is asked, so it never counts against a deployment's health."""

    def __init__(self, in_flight: int, queued: int) -> None:
        super().__init__("the LM pool", queued)
        self.in_flight = in_flight
        self.args = (
            f"the LM pool is overloaded: {in_flight} LM calls in flight and {queued} waiting "
            "(the bounds dsa.start(lm_max_in_flight=..., lm_max_queue=...) set); raise them "
            "or retry later",
        )


@dataclass(frozen=True, slots=True)
class LMPoolConfig:
    """How the LM pool behaves. ``fallbacks`` maps a deployment key to LMs to try instead."""

    max_queue: int = 4096
    fallbacks: Mapping[str, Sequence[LM]] = field(default_factory=dict)
    breaker_factory: Callable[[str], CircuitBreaker] | None = None
    rate_limits: Mapping[str, RateLimiter] = field(default_factory=dict)


class LMPublisher(Protocol):
    """What the pool reports its requests to (the app's ``EventBridge.lm_publisher``):
    every request is counted in ``counts`` where it ends, and ``publisher(trace_id)`` says
    how to publish its ``lm.*`` events, or None while nobody needs them (none is built)."""

    @property
    def counts(self) -> LMCounts: ...

    def __call__(self, trace_id: str | None) -> Callable[[Any], None] | None: ...


class PoolWorker(Protocol):
    """What the dispatcher hands a request to (one at a time): a :class:`Slot`."""

    @property
    def actor_urn(self) -> str: ...

    def send(self, work: Work) -> None: ...


@dataclass(slots=True, eq=False)
class _Pending:
    request: LMRequest
    attempts: int = 0


@dataclass(frozen=True, slots=True, eq=False)
class Work:
    """A request handed to one worker, with the deployment and breaker permit it runs on."""

    pending: _Pending
    lm: LM
    key: str
    breaker: CircuitBreaker
    permit: Permit


class SlotOwner(Protocol):
    """What runs the requests of its :class:`Slot`s: an LM event loop
    (``runtime._lm_loop``) or an LM worker process (``runtime._lm_process``)."""

    @property
    def name(self) -> str: ...

    def send(self, slot: Slot, work: Work) -> None: ...


class Slot:
    """One worker the dispatcher sees (a :class:`PoolWorker`): one request at a time,
    run by its owner, which offers as many slots as it takes requests at once."""

    __slots__ = ("_kind", "_owner", "actor_urn")

    def __init__(self, owner: SlotOwner, index: int, kind: str) -> None:
        self._owner = owner
        self._kind = kind
        self.actor_urn = f"{owner.name}/slot-{index}"

    def send(self, work: Work) -> None:
        """Hand ``work`` to this slot's host (the dispatcher's hand-off, after its lock)."""
        self._owner.send(self, work)

    def __repr__(self) -> str:
        return f"<LM {self._kind} slot {self.actor_urn}>"


class Dispatcher:
    """The pool's shared state: queue, idle workers, busy workers, breakers. Thread-safe.

    ``submit`` runs in the sender's thread, ``finished`` in the worker's: each hands work
    straight to a slot (``Slot.send``) after holding the lock only for bookkeeping.
    """

    def __init__(self, config: LMPoolConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._queue: deque[_Pending] = deque()
        self._idle: deque[PoolWorker] = deque()
        self._busy: dict[str, Work] = {}
        self._workers: set[str] = set()
        self._breakers: dict[str, CircuitBreaker] = {}
        self._wake: Callable[[float], None] = lambda _delay: None

    # Called by anyone. ---------------------------------------------------------------

    def submit(self, request: LMRequest) -> None:
        out = _Handover()
        with self._lock:
            if len(self._queue) >= self.config.max_queue:
                out.fail(request.reply, LMOverloaded(len(self._workers), self.config.max_queue))
            else:
                self._queue.append(_Pending(request))
                self._assign(out)
        out.deliver()

    def breaker(self, key: str) -> CircuitBreaker:
        with self._lock:
            return self._breaker(key)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "queued": len(self._queue),
                "busy": len(self._busy),
                "busy_by_deployment": _count_by_key(self._busy.values()),
                "idle": len(self._idle),
                "workers": len(self._workers),
                "breakers": {k: b.state for k, b in self._breakers.items()},
            }

    # Called by workers. --------------------------------------------------------------

    def finished(
        self, worker: PoolWorker, outcome: str, duration: float, *, unanswered: str | None = None
    ) -> None:
        """A worker finished its request (``outcome``: success, failure or ignore).
        ``unanswered``: whatever ran it was torn down first; the request is queued again,
        first in line, or failed with this message the second time."""
        out = _Handover()
        with self._lock:
            work = self._busy.pop(worker.actor_urn, None)
            if work is not None and worker.actor_urn in self._workers:
                self._idle.append(worker)
            if work is not None and unanswered is not None:
                self._retry_or_fail(work, unanswered, out)
            self._assign(out)
        if work is not None:
            if outcome == "success":
                work.breaker.record_success(duration, work.permit)
            elif outcome == "failure":
                work.breaker.record_failure(duration, work.permit)
            else:
                work.breaker.release(work.permit)
        out.deliver()

    # Called by the router actor. -----------------------------------------------------

    def add_worker(self, worker: PoolWorker) -> bool:
        out = _Handover()
        with self._lock:
            if worker.actor_urn in self._workers:
                return False
            self._workers.add(worker.actor_urn)
            self._idle.append(worker)
            self._assign(out)
        out.deliver()
        return True

    def workers_died(self, workers: Sequence[PoolWorker], reason: object) -> None:
        """Forget dead workers (one host's slots); retry each of their requests once (it
        may never have been answered).

        All of them are withdrawn before any request is retried: withdrawn one at a time,
        a request retried from the first could be handed to a sibling slot of the same
        dead host, and die there a second time (``LMWorkerCrashed``) without ever having
        had a live worker."""
        urns = {worker.actor_urn for worker in workers}
        out = _Handover()
        with self._lock:
            self._workers -= urns
            self._idle = deque(w for w in self._idle if w.actor_urn not in urns)
            works = [work for urn in urns if (work := self._busy.pop(urn, None)) is not None]
            for work in works:
                self._retry_or_fail(
                    work, f"the LM worker died twice on this request ({reason})", out
                )
            self._assign(out)
        for work in works:
            work.breaker.release(work.permit)
        out.deliver()

    def run_attempt(self, worker: PoolWorker, attempt: LMAttempt, lm: Any) -> None:
        """Make ``attempt``'s call in this thread, on ``worker``'s slot, then free the slot:
        a thread running a call an event loop or a worker process cannot take (an LM-like
        object with only ``complete``).

        A thread torn down meanwhile (KeyboardInterrupt, SystemExit) hands the request
        back to the pool, as a dead worker's, and the exception goes on."""
        outcome = "ignore"
        try:
            outcome = attempt.run(lm)
        except Exception:  # a bug below us: the caller has it as its answer
            _log.exception("lm_call_failed", lm=repr(lm))
        except BaseException:
            duration = time.monotonic() - attempt.started
            self.finished(worker, "ignore", duration, unanswered=TORN_DOWN_TWICE)
            raise
        self.finished(worker, outcome, time.monotonic() - attempt.started)

    def set_waker(self, wake: Callable[[float], None]) -> None:
        """How to schedule another ``assign`` after a rate limiter said "not yet"."""
        self._wake = wake

    def wake(self) -> None:
        out = _Handover()
        with self._lock:
            self._assign(out)
        out.deliver()

    def fail_all(self, error: BaseException) -> None:
        """Fail every queued and in-flight request (the pool is going away)."""
        with self._lock:
            pending = [*self._queue, *(w.pending for w in self._busy.values())]
            self._queue.clear()
            self._busy.clear()
            self._idle.clear()
            self._workers.clear()
        for item in pending:
            reject(item.request.reply, error)

    # Internals (lock held). --------------------------------------------------------------

    def _breaker(self, key: str) -> CircuitBreaker:
        breaker = self._breakers.get(key)
        if breaker is None:
            factory = self.config.breaker_factory
            breaker = factory(key) if factory is not None else CircuitBreaker(name=key)
            self._breakers[key] = breaker
        return breaker

    def _assign(self, out: _Handover) -> None:
        """Pair queued requests with idle workers, into ``out`` (delivered after the lock,
        with the requests that failed meanwhile)."""
        while self._queue and self._idle:
            pending = self._queue[0]
            request = pending.request
            if request.reply.done():  # answered meanwhile (a deadline, a cancel)
                self._queue.popleft()
                continue
            remaining = request.ctx.remaining()
            if remaining is not None and remaining <= 0:
                self._queue.popleft()
                out.fail(request.reply, DeadlineExceeded(request.ctx.trace_id, "LM queue"))
                continue
            chosen = self._choose(request, out)
            if chosen is None:
                self._queue.popleft()
                continue
            lm, key, breaker, permit = chosen
            limiter = self.config.rate_limits.get(key)
            if limiter is not None and not limiter.try_acquire():
                breaker.release(permit)
                self._wake(limiter.time_until_available())
                break
            self._queue.popleft()
            worker = self._idle.popleft()
            work = Work(pending, lm, key, breaker, permit)
            self._busy[worker.actor_urn] = work
            out.handoffs.append((worker, work))

    def _retry_or_fail(self, work: Work, failure: str, out: _Handover) -> None:
        """Queue an unanswered request again, first in line; fail it the second time."""
        if work.pending.request.reply.done():
            return
        work.pending.attempts += 1
        if work.pending.attempts >= 2:
            out.fail(work.pending.request.reply, LMWorkerCrashed(failure))
        else:
            self._queue.appendleft(work.pending)

    def _choose(
        self, request: LMRequest, out: _Handover
    ) -> tuple[LM, str, CircuitBreaker, Permit] | None:
        """The first deployment whose breaker admits the request, or None (the request
        fails, in ``out``)."""
        primary = deployment_key(request.lm)
        candidates = [request.lm, *self.config.fallbacks.get(primary, ())]
        error: CircuitOpen | None = None
        for lm in candidates:
            key = deployment_key(lm)
            breaker = self._breaker(key)
            try:
                permit = breaker.acquire()
            except CircuitOpen as exc:
                error = error or exc
                continue
            return lm, key, breaker, permit
        assert error is not None
        out.fail(request.reply, error)
        return None


TORN_DOWN_TWICE = "the thread running this LM request was torn down twice"


def _count_by_key(works: Iterable[Work]) -> dict[str, int]:
    out: dict[str, int] = {}
    for work in works:
        out[work.key] = out.get(work.key, 0) + 1
    return out


_log = redaction.get_logger("dspy_actors.runtime.lm")


@dataclass(slots=True, eq=False)
class _Handover:
    """What one of the dispatcher's critical sections decided, carried out after its lock:
    the replies to fail, then the work to hand to workers. Never under the lock: completing
    a reply runs its callbacks, which may do anything, a ``submit`` included."""

    handoffs: list[tuple[PoolWorker, Work]] = field(default_factory=list)
    failures: list[tuple[Future[Any], BaseException]] = field(default_factory=list)

    def fail(self, reply: Future[Any], error: BaseException) -> None:
        self.failures.append((reply, error))

    def deliver(self) -> None:
        for reply, error in self.failures:
            reject(reply, error)
        for worker, work in self.handoffs:
            worker.send(work)


@dataclass(frozen=True, slots=True)
class PoolStats:
    """Ask the router with this message for its stats dict."""


@dataclass(frozen=True, slots=True)
class _Wake:
    pass


class LMRouter(supervisors.SupervisedActor):
    """Owns the dispatcher's lifetime: wakes rate-limited queues, fails what is queued when
    it restarts or stops. (Slot hosts add and withdraw their slots themselves.)"""

    def __init__(self, dispatcher: Dispatcher) -> None:
        super().__init__()
        self.dispatcher = dispatcher
        self._timer: threading.Timer | None = None
        self._timer_lock = threading.Lock()

    def on_start(self) -> None:
        # A restarted router starts over: whatever was queued before is failed clearly
        # (the slot hosts restart after us, rest_for_one, and add their slots again).
        self.dispatcher.fail_all(ModuleUnavailable("lm pool (restarted)"))
        self.dispatcher.set_waker(self._schedule_wake)

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, _Wake):
            self.dispatcher.wake()
        elif isinstance(message, PoolStats):
            return self.dispatcher.stats()
        else:
            return super().on_receive(message)
        return None

    def _schedule_wake(self, delay: float) -> None:
        with self._timer_lock:
            if self._timer is not None and self._timer.is_alive():
                return
            ref = self.actor_ref

            def wake() -> None:
                try:
                    ref.tell(_Wake())
                except pykka.ActorDeadError:
                    pass  # Stopped meanwhile.

            self._timer = threading.Timer(max(delay, 0.001), wake)
            self._timer.daemon = True
            self._timer.start()

    def _shutdown(self) -> None:
        self.dispatcher.set_waker(lambda _delay: None)
        with self._timer_lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer.join(timeout=1.0)
        self.dispatcher.fail_all(ModuleUnavailable("lm pool"))

    def on_stop(self) -> None:
        self._shutdown()

    def on_failure(self, *_exc: object) -> None:
        self._shutdown()


@dataclass(slots=True, eq=False)
class LMAttempt:
    """One request run on a slot (of a loop or a process): the deadline check and
    timeout before it, the ``lm.start``/``lm.end`` events around it (while someone needs
    them), its count where it ends, the answer after it, and the outcome the breaker
    counts."""

    request: LMRequest
    kwargs: dict[str, Any]
    publish: Callable[[Any], None] | None
    ended: Callable[..., LMEnd] | None
    started: float
    counts: LMCounts | None = None
    key: str = ""
    model: str = ""

    @classmethod
    def begin(
        cls,
        request: LMRequest,
        lm: LM,
        key: str,
        publisher: LMPublisher | None,
    ) -> LMAttempt | None:
        """None: the request is answered already (cancelled, or past its deadline)."""
        reply = request.reply
        if reply.done():
            return None
        ctx = request.ctx
        kwargs = dict(request.kwargs)
        remaining = ctx.remaining()
        if remaining is not None:
            if remaining <= 0:
                reject(reply, DeadlineExceeded(ctx.trace_id, f"LM {lm.model}"))
                return None
            if not _plain_lm(lm):
                # An LM-like object knows no deadline: its timeout is cut to what is left.
                # (An LM gets the deadline below and cuts each attempt to the sooner of it
                # and its own per-attempt timeout: replacing that timeout with what is left
                # of the call would let one hung attempt eat the whole deadline.)
                limit = kwargs.get("timeout", getattr(lm, "timeout", None))
                kwargs["timeout"] = remaining if limit is None else min(limit, remaining)
        if _plain_lm(lm):  # (an LM-like object gets neither: it may not know them)
            if request.known_miss is not None:
                # prepare() ignores a miss probed on another LM (a fallback).
                kwargs["known_miss"] = request.known_miss
            if ctx.deadline is not None:
                kwargs["deadline"] = ctx.deadline  # bounds the retries too
        counts: LMCounts | None = None
        publish: Callable[[Any], None] | None = None
        ended: Callable[..., LMEnd] | None = None  # what builds lm.end, while someone listens
        if publisher is not None:
            counts, publish = publisher.counts, publisher(ctx.trace_id)
        if publish is not None:
            publish(LMStart(trace_id=ctx.trace_id, deployment=key, model=lm.model))
            ended = partial(LMEnd, trace_id=ctx.trace_id, deployment=key, model=lm.model)
        return cls(request, kwargs, publish, ended, time.monotonic(), counts, key, lm.model)

    def retried(self, error: LMError, delay: float) -> None:
        """An HTTP retry of this request: the ``lm.retry`` event (``retry_listener``)."""
        ended = self.ended  # (a partial holding the request's trace id, deployment, model)
        if self.publish is not None and isinstance(ended, partial):
            self.publish(LMRetry(**ended.keywords, error_type=type(error).__name__, delay_s=delay))

    def run(self, lm: Any) -> str:
        """Make the call in this thread (it blocks) and answer it; the outcome. Anything but
        an ``LMError`` is a bug below us: the caller's answer, then raised here."""
        request = self.request
        listening = retry_listener.set(self.retried if self.publish is not None else None)
        try:
            with restored(request.ctx):
                if _plain_lm(lm):  # look up (with the probe's miss), send, settle
                    response = lm.send(lm.prepare(request.messages, **self.kwargs))
                else:  # an LM-like object, or an LM whose complete() is its own
                    response = lm.complete(request.messages, **self.kwargs)
        except LMError as error:
            return self.failed(error)
        except Exception as error:
            reject(request.reply, error)
            raise
        finally:
            retry_listener.reset(listening)
        return self.succeeded(response)

    def succeeded(self, response: Any, before_answer: Callable[[str], None] | None = None) -> str:
        """Answer ``response``; ``before_answer(outcome)`` runs first (the breaker then
        counts the outcome before the caller can make its next call)."""
        if before_answer is not None:
            before_answer("success")
        # Counted, and lm.end published, before the caller is answered: a caller that
        # reads the counts (or flushes the event bus) after its reply finds it there.
        if self.counts is not None or self.publish is not None:
            latency = time.monotonic() - self.started
            usage = getattr(response, "usage", None)  # (an LM-like object's answer may lack it)
            prompt_tokens = getattr(usage, "prompt_tokens", None)
            completion_tokens = getattr(usage, "completion_tokens", None)
            cache_hit = bool(getattr(response, "cache_hit", False))
            if self.counts is not None:
                self.counts.ended(
                    self.key, self.model, latency, cache_hit=cache_hit,
                    prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                )  # fmt: skip
            if self.publish is not None and self.ended is not None:
                self.publish(
                    self.ended(
                        latency_s=latency,
                        prompt_tokens=prompt_tokens,
                        completion_tokens=completion_tokens,
                        cache_hit=cache_hit,
                        finish_reasons=tuple(
                            r for r in getattr(response, "finish_reasons", ()) or () if r
                        ),
                    )
                )
        resolve(self.request.reply, response)
        return "success"

    def failed(self, error: LMError, before_answer: Callable[[str], None] | None = None) -> str:
        """Answer ``error``; ``before_answer(outcome)`` runs first, as for succeeded."""
        outcome = "failure" if type(error).__name__ in _UNHEALTHY else "ignore"
        if before_answer is not None:
            before_answer(outcome)
        latency = time.monotonic() - self.started
        if self.counts is not None:
            self.counts.ended(self.key, self.model, latency, error_type=type(error).__name__)
        if self.publish is not None and self.ended is not None:
            self.publish(self.ended(latency_s=latency, error_type=type(error).__name__))
        reject(self.request.reply, error)
        return outcome


def _plain_lm(lm: object) -> bool:
    """Whether ``lm`` is an LM whose ``complete`` is LM's own, so the pool may run its
    phases itself (``prepare`` with the probe's miss and the deadline, ``send``); an LM
    subclass overriding ``complete`` (or ``acomplete``) is called through it, as an
    LM-like object is."""
    return (
        isinstance(lm, LM)
        and type(lm).complete is LM.complete
        and type(lm).acomplete is LM.acomplete
    )


def submit_lm_request(
    dispatcher: Dispatcher,
    lm: LM,
    messages: list[dict[str, Any]],
    kwargs: Mapping[str, Any],
    ctx: CallContext,
    known_miss: CacheMiss | None = None,
) -> Future[Any]:
    """Hand an LM request to the pool; the returned future completes with the response.
    ``known_miss``: the sender already looked the cache up (``LM.probe``) and missed."""
    reply: Future[Any] = Future()
    dispatcher.submit(LMRequest(lm, messages, kwargs, ctx, reply, known_miss))
    return reply


class PooledLM:
    """Stands in for an LM where code runs outside actors (an optimization run's
    evaluation threads): each completion goes through the app's LM pool, so it counts
    against the pool's concurrency, queue bound and circuit breakers, and the caller's
    thread waits for the worker's answer. Cache hits are answered in place. Every other
    attribute is the wrapped LM's.
    """

    def __init__(self, lm: LM, dispatcher: Dispatcher, timeout: float = 600.0) -> None:
        self._lm = lm
        self._dispatcher = dispatcher
        self._timeout = timeout

    def __getattr__(self, name: str) -> Any:
        return getattr(self._lm, name)

    def complete(self, messages: list[dict[str, Any]], **kwargs: Any) -> Any:
        hit = self._lm.cached(messages, **kwargs)
        if hit is not None:
            return hit
        ctx = capture(timeout=self._timeout)
        reply = submit_lm_request(self._dispatcher, self._lm, messages, kwargs, ctx)
        remaining = ctx.remaining()
        return reply.result(timeout=self._timeout if remaining is None else max(remaining, 0.0))

    def __repr__(self) -> str:
        return f"PooledLM({self._lm!r})"
