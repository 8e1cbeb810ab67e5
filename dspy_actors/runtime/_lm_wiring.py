"""The app's ``lm`` node: the dispatcher (breakers, fallbacks, rate limits) and the
supervised slot hosts that send its requests (event loops, or worker processes with
``lm_processes``), built from the app's settings. Each tree the app starts gets a fresh
``LMWiring``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import supervisors
from dspy_actors.lm._breaker import BreakerTransition, CircuitBreaker
from dspy_actors.lm._rate_limit import RateLimiter
from dspy_actors.runtime._lm_loop import LMLoop
from dspy_actors.runtime._lm_pool import (
    Dispatcher,
    LMPoolConfig,
    LMPublisher,
    LMRouter,
    deployment_key,
)
from dspy_actors.runtime._lm_process import LMProcess

if TYPE_CHECKING:
    from dspy_actors.lm._lm import LM
    from dspy_actors.runtime._app_config import AppConfig

# How long an LM worker process may take to start before its start counts as failed.
_PROCESS_START_SECONDS = 75.0  # beyond the process's own 60 s readiness wait


@dataclass(frozen=True, slots=True)
class LMWiring:
    """One tree's LM pool: its dispatcher, and the ``lm`` node's spec that serves it."""

    dispatcher: Dispatcher
    spec: supervisors.ChildSpec


def wire_lm_pool(
    config: AppConfig,
    registry: supervisors.Registry,
    router_name: str,
    publisher: LMPublisher,
    on_breaker_transition: Callable[[BreakerTransition], None],
) -> LMWiring:
    """The ``lm`` node (rest_for_one: the router, then its workers) for ``config``.
    ``publisher``: where the pool counts its requests and publishes their events (while
    someone listens)."""
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
            max_queue=config.lm_max_queue,
            fallbacks=fallbacks,
            breaker_factory=make_breaker,
            rate_limits=limits,
        )
    )
    workers = _host_specs(config, dispatcher, publisher)
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


def _host_specs(
    config: AppConfig,
    dispatcher: Dispatcher,
    publisher: LMPublisher,
) -> list[supervisors.ChildSpec]:
    """The slot hosts: ``lm_max_in_flight`` slots spread over the worker processes
    (``lm_processes``), else over the event loops (``lm_loops``)."""
    if config.lm_processes > 0:
        slots = -(-config.lm_max_in_flight // config.lm_processes)
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
