"""The LM pool: a router actor and a pool of worker actors that do the blocking HTTP calls.

Module actors never wait on the LM: they send an :class:`LMRequest` to the router and go on
serving; the request's future is completed by a worker, later. The router owns the flow
control of every deployment (an LM's provider + endpoint + model):

- a bounded queue: past ``max_queue`` waiting requests, new ones fail fast (``Overloaded``);
- a circuit breaker per deployment: while it is open, requests go to the next fallback
  deployment, or fail fast with ``CircuitOpen``;
- an optional rate limiter per deployment;
- a worker that crashes mid-call is replaced by its supervisor, and its request is retried
  once on another worker (an LM completion is safe to repeat), then failed clearly.

Blocking I/O lives only in the workers (one in-flight request each), so ``workers`` is the
pool's concurrency.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pykka

import supervisors
from dspy_actors.lm.breaker import CircuitBreaker, CircuitOpen, Permit
from dspy_actors.lm.errors import LMError
from dspy_actors.lm.rate_limit import RateLimiter
from dspy_actors.runtime._futures import reject, resolve
from dspy_actors.runtime.context import restored
from dspy_actors.runtime.errors import DeadlineExceeded, ModuleUnavailable, Overloaded
from dspy_actors.runtime.events import LMEnd, LMStart
from dspy_actors.runtime.messages import LMRequest

if TYPE_CHECKING:
    from dspy_actors.lm.lm import LM

# Errors that say the deployment is unhealthy (the breaker counts them); others, such as a
# bad request, are the caller's problem and must not open the breaker.
_UNHEALTHY = ("ServerError", "LMTimeout", "LMConnectionError", "MalformedResponse", "RateLimited")


def deployment_key(lm: LM) -> str:
    """Identifies a deployment: two LMs with the same provider, endpoint and model share it."""
    return f"{lm.provider}:{lm.api_base}:{lm.model_name}"


class LMWorkerCrashed(LMError):
    """The LM worker running the request crashed twice; the request was not completed."""


@dataclass(frozen=True, slots=True)
class LMPoolConfig:
    """How the LM pool behaves. ``fallbacks`` maps a deployment key to LMs to try instead."""

    workers: int = 64
    max_queue: int = 4096
    fallbacks: Mapping[str, Sequence[LM]] = field(default_factory=dict)
    breaker_factory: Callable[[str], CircuitBreaker] | None = None
    rate_limits: Mapping[str, RateLimiter] = field(default_factory=dict)


# Messages between router and workers.


@dataclass(frozen=True, slots=True)
class _WorkerReady:
    worker: pykka.ActorRef[Any]


@dataclass(frozen=True, slots=True, eq=False)
class _Work:
    request: LMRequest
    lm: LM


@dataclass(frozen=True, slots=True)
class _WorkDone:
    worker_urn: str
    key: str
    outcome: str  # "success" | "failure" | "ignore"
    duration: float


@dataclass(frozen=True, slots=True)
class PoolStats:
    """Ask the router with this message for its stats dict."""


@dataclass(frozen=True, slots=True)
class _Retry:
    pass


@dataclass(slots=True, eq=False)
class _Pending:
    request: LMRequest
    attempts: int = 0


@dataclass(slots=True, eq=False)
class _Busy:
    worker: pykka.ActorRef[Any]
    pending: _Pending
    key: str
    breaker: CircuitBreaker
    permit: Permit


class LMRouter(supervisors.SupervisedActor):
    """Queues LM requests and hands each to an idle worker, through breakers and limits."""

    def __init__(self, config: LMPoolConfig) -> None:
        super().__init__()
        self.config = config
        self._queue: deque[_Pending] = deque()
        self._idle: deque[pykka.ActorRef[Any]] = deque()
        self._busy: dict[str, _Busy] = {}
        self._workers: set[str] = set()
        self._breakers: dict[str, CircuitBreaker] = {}
        self._retry_timer: threading.Timer | None = None

    def stats(self) -> dict[str, Any]:
        """Queue, busy and idle counts and breaker states (ask the router for ``PoolStats``)."""
        return {
            "queued": len(self._queue),
            "busy": len(self._busy),
            "idle": len(self._idle),
            "workers": len(self._workers),
            "breakers": {k: b.state for k, b in self._breakers.items()},
        }

    def breaker(self, key: str) -> CircuitBreaker:
        breaker = self._breakers.get(key)
        if breaker is None:
            factory = self.config.breaker_factory
            breaker = factory(key) if factory is not None else CircuitBreaker(name=key)
            self._breakers[key] = breaker
        return breaker

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, LMRequest):
            self._accept(message)
        elif isinstance(message, _WorkDone):
            self._done(message)
        elif isinstance(message, _WorkerReady):
            self._ready(message.worker)
        elif isinstance(message, supervisors.Down):
            self._worker_down(message)
        elif isinstance(message, PoolStats):
            return self.stats()
        elif isinstance(message, _Retry):
            self._retry_timer = None
            self._dispatch()
        else:
            return super().on_receive(message)
        return None

    def _accept(self, request: LMRequest) -> None:
        if len(self._queue) >= self.config.max_queue:
            reject(request.reply, Overloaded("the LM pool", self.config.max_queue))
            return
        self._queue.append(_Pending(request))
        self._dispatch()

    def _ready(self, worker: pykka.ActorRef[Any]) -> None:
        if worker.actor_urn in self._workers:
            return
        self._workers.add(worker.actor_urn)
        supervisors.monitor(worker, self.actor_ref)
        self._idle.append(worker)
        self._dispatch()

    def _dispatch(self) -> None:
        while self._queue and self._idle:
            pending = self._queue[0]
            request = pending.request
            if request.reply.done():  # cancelled by its caller
                self._queue.popleft()
                continue
            remaining = request.ctx.remaining()
            if remaining is not None and remaining <= 0:
                self._queue.popleft()
                reject(request.reply, DeadlineExceeded(request.ctx.trace_id, "LM queue"))
                continue
            chosen = self._choose(request)
            if chosen is None:
                self._queue.popleft()
                continue
            lm, key, breaker, permit = chosen
            limiter = self.config.rate_limits.get(key)
            if limiter is not None and not limiter.try_acquire():
                breaker.release(permit)
                self._schedule_retry(limiter.time_until_available())
                return
            self._queue.popleft()
            worker = self._idle.popleft()
            self._busy[worker.actor_urn] = _Busy(worker, pending, key, breaker, permit)
            worker.tell(_Work(request, lm))

    def _choose(self, request: LMRequest) -> tuple[LM, str, CircuitBreaker, Permit] | None:
        """The first deployment whose breaker admits the request, or None (request failed)."""
        primary = deployment_key(request.lm)
        candidates = [request.lm, *self.config.fallbacks.get(primary, ())]
        error: CircuitOpen | None = None
        for lm in candidates:
            key = deployment_key(lm)
            breaker = self.breaker(key)
            try:
                permit = breaker.acquire()
            except CircuitOpen as exc:
                error = error or exc
                continue
            return lm, key, breaker, permit
        assert error is not None
        reject(request.reply, error)
        return None

    def _schedule_retry(self, delay: float) -> None:
        if self._retry_timer is not None:
            return
        ref = self.actor_ref

        def wake() -> None:
            try:
                ref.tell(_Retry())
            except pykka.ActorDeadError:
                pass  # Stopped meanwhile.

        self._retry_timer = threading.Timer(max(delay, 0.001), wake)
        self._retry_timer.daemon = True
        self._retry_timer.start()

    def _done(self, message: _WorkDone) -> None:
        busy = self._busy.pop(message.worker_urn, None)
        if busy is None:
            return
        breaker, permit = busy.breaker, busy.permit
        if message.outcome == "success":
            breaker.record_success(message.duration, permit)
        elif message.outcome == "failure":
            breaker.record_failure(message.duration, permit)
        else:
            breaker.release(permit)
        if message.worker_urn in self._workers:
            self._idle.append(busy.worker)
        self._dispatch()

    def _worker_down(self, down: supervisors.Down) -> None:
        urn = down.actor.actor_urn
        self._workers.discard(urn)
        self._idle = deque(w for w in self._idle if w.actor_urn != urn)
        busy = self._busy.pop(urn, None)
        if busy is None:
            return
        busy.breaker.release(busy.permit)
        pending = busy.pending
        if pending.request.reply.done():
            return
        pending.attempts += 1
        if pending.attempts >= 2:
            reject(
                pending.request.reply,
                LMWorkerCrashed(f"the LM worker crashed twice on this request ({down.reason})"),
            )
        else:
            self._queue.appendleft(pending)
        self._dispatch()

    def _fail_all(self, error: BaseException) -> None:
        if self._retry_timer is not None:
            self._retry_timer.cancel()
        for pending in [*self._queue, *(b.pending for b in self._busy.values())]:
            if not pending.request.reply.done():
                reject(pending.request.reply, error)
        self._queue.clear()
        self._busy.clear()

    def on_stop(self) -> None:
        self._fail_all(ModuleUnavailable("lm pool"))

    def on_failure(self, *_exc: object) -> None:
        self._fail_all(ModuleUnavailable("lm pool"))


class LMWorker(supervisors.SupervisedActor):
    """Runs one LM request at a time (the blocking HTTP call), then reports to the router."""

    def __init__(
        self,
        router_name: str,
        registry: supervisors.Registry,
        publish: Callable[[Any], None] | None = None,
    ) -> None:
        """``publish`` gets ``lm.start``/``lm.end`` events (None: no events)."""
        super().__init__()
        self._router_name = router_name
        self._registry = registry
        self._publish = publish

    def on_start(self) -> None:
        self._registry.lookup(self._router_name).tell(_WorkerReady(self.actor_ref))

    def on_receive(self, message: Any) -> Any:
        if not isinstance(message, _Work):
            return super().on_receive(message)
        request, lm = message.request, message.lm
        started = time.monotonic()
        try:
            outcome = self._run(request, lm)
        except Exception:
            self._report(lm, "ignore", started)  # the caller has its error; we crash next
            raise
        # A BaseException (the thread torn down) skips the report on purpose: the router
        # then learns of our death from the monitor and retries the unanswered request.
        self._report(lm, outcome, started)
        return None

    def _report(self, lm: LM, outcome: str, started: float) -> None:
        router = self._registry.whereis(self._router_name)
        if router is not None:
            router.tell(
                _WorkDone(
                    self.actor_ref.actor_urn,
                    deployment_key(lm),
                    outcome,
                    time.monotonic() - started,
                )
            )

    def _run(self, request: LMRequest, lm: LM) -> str:
        reply = request.reply
        if reply.done():  # cancelled by its caller meanwhile
            return "ignore"
        ctx = request.ctx
        kwargs = dict(request.kwargs)
        remaining = ctx.remaining()
        if remaining is not None:
            if remaining <= 0:
                reject(reply, DeadlineExceeded(ctx.trace_id, f"LM {lm.model}"))
                return "ignore"
            limit = kwargs.get("timeout")
            kwargs["timeout"] = remaining if limit is None else min(limit, remaining)
        publish = self._publish
        key = deployment_key(lm)
        if publish is not None:
            publish(LMStart(trace_id=ctx.trace_id, deployment=key, model=lm.model))
        started = time.monotonic()
        try:
            with restored(ctx):
                response = lm.complete(request.messages, **kwargs)
        except LMError as error:
            reject(reply, error)
            if publish is not None:
                publish(
                    LMEnd(
                        trace_id=ctx.trace_id,
                        deployment=key,
                        model=lm.model,
                        latency_s=time.monotonic() - started,
                        error_type=type(error).__name__,
                    )
                )
            return "failure" if type(error).__name__ in _UNHEALTHY else "ignore"
        except Exception as error:  # A bug below us: answer the caller, then crash.
            reject(reply, error)
            raise
        resolve(reply, response)
        if publish is not None:
            publish(
                LMEnd(
                    trace_id=ctx.trace_id,
                    deployment=key,
                    model=lm.model,
                    latency_s=time.monotonic() - started,
                    prompt_tokens=response.usage.prompt_tokens,
                    completion_tokens=response.usage.completion_tokens,
                    cache_hit=response.cache_hit,
                )
            )
        return "success"


def submit_lm_request(
    router: pykka.ActorRef[Any] | None,
    lm: LM,
    messages: list[dict[str, Any]],
    kwargs: Mapping[str, Any],
    ctx: Any,
) -> Future[Any]:
    """Send an LM request to the pool; the returned future completes with the response."""
    reply: Future[Any] = Future()
    if router is None:
        reject(reply, ModuleUnavailable("lm pool"))
        return reply
    try:
        router.tell(LMRequest(lm, messages, kwargs, ctx, reply))
    except pykka.ActorDeadError:
        reject(reply, ModuleUnavailable("lm pool"))
    return reply
