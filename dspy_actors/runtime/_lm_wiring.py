"""The app's ``lm`` node: the dispatcher (breakers, fallbacks, rate limits) and the
supervised workers that send its requests (event loops, threads or processes), built from
the app's settings. Each tree the app starts gets a fresh ``LMWiring``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import supervisors
from dspy_actors.lm._breaker import BreakerTransition, CircuitBreaker
from dspy_actors.lm._rate_limit import RateLimiter
from dspy_actors.runtime import _events as ev
from dspy_actors.runtime._lm_loop import LMLoop
from dspy_actors.runtime._lm_pool import (
    Dispatcher,
    LMPoolConfig,
    LMRouter,
    LMWorker,
    deployment_key,
)
from dspy_actors.runtime._lm_process import LMProcess

if TYPE_CHECKING:
    from dspy_actors.lm._lm import LM
    from dspy_actors.runtime._app_config import AppConfig

# How long an LM worker process may take to start before its start counts as failed.
_PROCESS_START_SECONDS = 75.0  # beyond the process's own 60 s readiness wait

# LM calls in flight over worker processes when lm_workers does not say.
PROCESS_SLOTS = 64


@dataclass(frozen=True, slots=True)
class LMWiring:
    """One tree's LM pool: its dispatcher, and the ``lm`` node's spec that serves it."""

    dispatcher: Dispatcher
    spec: supervisors.ChildSpec


def wire_lm_pool(
    config: AppConfig,
    registry: supervisors.Registry,
    router_name: str,
    publisher: Callable[[str | None], Callable[[ev.Event], None] | None],
    on_breaker_transition: Callable[[BreakerTransition], None],
) -> LMWiring:
    """The ``lm`` node (rest_for_one: the router, then its workers) for ``config``.
    ``publisher`` says how to publish pool events (None while nobody listens)."""
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
        return CircuitBreaker(name=key, on_transition=on_breaker_transition, **breaker_options)

    dispatcher = Dispatcher(
        LMPoolConfig(
            workers=config.lm_workers,
            max_queue=config.lm_max_queue,
            fallbacks=fallbacks,
            breaker_factory=make_breaker,
            rate_limits=limits,
        )
    )
    workers = _worker_specs(config, registry, router_name, dispatcher, publisher)
    spec = supervisors.Supervisor.child_spec(
        "lm",
        [
            supervisors.ChildSpec("router", LMRouter, args=(dispatcher,), name=router_name),
            supervisors.Supervisor.child_spec(
                "workers",
                workers,
                intensity=100,
                period=5.0,
                registry=registry,
                label=f"{config.name}/lm/workers",
            ),
        ],
        strategy="rest_for_one",
        registry=registry,
        label=f"{config.name}/lm",
    )
    return LMWiring(dispatcher, spec)


def _worker_specs(
    config: AppConfig,
    registry: supervisors.Registry,
    router_name: str,
    dispatcher: Dispatcher,
    publisher: Callable[[str | None], Callable[[ev.Event], None] | None],
) -> list[supervisors.ChildSpec]:
    if config.lm_processes > 0:
        # The same concurrency, spread over the processes' slots.
        slots = -(-(config.lm_workers or PROCESS_SLOTS) // config.lm_processes)
        return [
            supervisors.ChildSpec(
                f"process-{i}",
                LMProcess,
                args=(f"{config.name}-lm-{i}", dispatcher, slots, publisher),
                shutdown=10.0,
                # A process takes ~0.6 s to start when the machine is idle, many times
                # that when it is loaded: a start is not a failure until this long.
                start_timeout=_PROCESS_START_SECONDS,
            )
            for i in range(config.lm_processes)
        ]
    if config.lm_workers == 0:
        # The default: event loops, lm_max_in_flight requests spread over them.
        slots = -(-config.lm_max_in_flight // config.lm_loops)
        return [
            supervisors.ChildSpec(
                f"loop-{i}",
                LMLoop,
                args=(f"{config.name}-lm-loop-{i}", dispatcher, slots, publisher),
                shutdown=10.0,
            )
            for i in range(config.lm_loops)
        ]
    return [
        supervisors.ChildSpec(
            f"worker-{i}",
            LMWorker,
            args=(router_name, registry, dispatcher, publisher),
            shutdown=2.0,
        )
        for i in range(config.lm_workers)
    ]
