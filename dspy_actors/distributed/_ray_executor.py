"""``RayExecutor``: the executor (evaluate/_executor.py) that runs work as Ray tasks.

    executor = RayExecutor("ray://head:10001", rate_limit={"requests_per_second": 50})
    result = Evaluate(devset=dev, metric=metric, executor=executor)(program)
    run = app.optimize(optimizer, student, trainset=train, executor=executor)

The items are cut into chunks; each chunk is a Ray task (one CPU of any node) that runs its
items on ``threads_per_task`` threads with the caller's LM (rebuilt from its key-free
configuration: each node reads the API key from its own environment), the caller's
settings (adapter, sampling) and, with ``rate_limit``, the cluster's shared limiter. A
chunk whose node dies is run again elsewhere by Ray (``max_retries``); since a chunk's
results reach the caller only when the whole chunk is done, nothing is counted twice, and
with a deterministic program and LM the rerun gives the same results.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from dspy_actors import _settings as settings
from dspy_actors import redaction
from dspy_actors.evaluate._executor import Outcome, OutcomeCallback
from dspy_actors.evaluate._parallel import Cancelled

__all__ = ["RayExecutor", "RayExecutorStats"]

T = TypeVar("T")
R = TypeVar("R")

_log = redaction.get_logger("dspy_actors.distributed")
_POLL_SECONDS = 0.05
# Settings a worker gets from the caller: plain data only (a callback, a tool runner or a
# wrapped LM belongs to the caller's process).
_PORTABLE_SETTINGS = frozenset({"adapter", "cache", "warn_on_type_mismatch"}) | (
    settings.SAMPLING_KEYS
)


@dataclass
class RayExecutorStats:
    """What this executor has run: chunks finished per node id, chunks in all, items."""

    chunks_by_node: Counter[str] = field(default_factory=Counter)
    chunks: int = 0
    items: int = 0


def _base_lm(lm: Any) -> Any:
    """The LM under wrappers (a run's journal, the app's pool): what a worker rebuilds (an
    ``LM``, or a custom ``BaseLM`` whose ``dump_state`` names its importable class)."""
    from dspy_actors.lm._base_lm import BaseLM
    from dspy_actors.lm._lm import LM

    seen = 0
    while lm is not None and not isinstance(lm, LM | BaseLM) and seen < 8:
        lm = getattr(lm, "_lm", None)
        seen += 1
    return lm if isinstance(lm, LM | BaseLM) else None


class RayExecutor:
    """Runs parallel maps as Ray tasks; see the module docstring.

    ``address``: the cluster (``ray.init``'s address; None: the one this process is
    connected to, else a new local one). ``lm``: the LM workers use (default: the caller's
    current LM). ``rate_limit``: :class:`~dspy_actors.lm._rate_limit.RateLimiter` options
    enforced across the cluster by the named actor ``rate_limit_name``. ``chunk_size``:
    items per task (default: about four tasks per CPU of the cluster). ``timeout``: the
    longest a map may take (seconds).
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        lm: Any = None,
        rate_limit: Mapping[str, Any] | None = None,
        rate_limit_name: str = "default",
        chunk_size: int | None = None,
        threads_per_task: int = 8,
        max_retries: int = 3,
        namespace: str = "dspy-actors",
        timeout: float = 3600.0,
    ) -> None:
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size!r}")
        if threads_per_task < 1:
            raise ValueError(f"threads_per_task must be >= 1, got {threads_per_task!r}")
        if rate_limit is not None:
            from dspy_actors.lm._rate_limit import RateLimiter

            RateLimiter(**dict(rate_limit))  # bad options fail here, not on a worker
        self.address = address
        self.lm = lm
        self.rate_limit = None if rate_limit is None else dict(rate_limit)
        self.rate_limit_name = rate_limit_name
        self.chunk_size = chunk_size
        self.threads_per_task = threads_per_task
        self.max_retries = max_retries
        self.namespace = namespace
        self.timeout = timeout
        self.stats = RayExecutorStats()
        self._lock = threading.Lock()
        self._connected_here = False
        self._limiter: Any = None

    # -- connection ---------------------------------------------------------------------
    def connect(self) -> None:
        """Connect this process to the cluster (done on first use)."""
        import ray

        with self._lock:
            if ray.is_initialized():
                return
            ray.init(
                address=self.address,
                namespace=self.namespace,
                log_to_driver=False,
                include_dashboard=False,
                configure_logging=False,
            )
            self._connected_here = True

    def close(self) -> None:
        """Disconnect, if this executor connected the process (the cluster stays up)."""
        import ray

        with self._lock:
            if self._connected_here and ray.is_initialized():
                ray.shutdown()
            self._connected_here = False
            self._limiter = None

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def limiter(self) -> Any:
        """The cluster's limiter actor (None without ``rate_limit``)."""
        if self.rate_limit is None:
            return None
        from dspy_actors.distributed._rate_limit import limiter_actor

        with self._lock:
            if self._limiter is None:
                self._limiter = limiter_actor(self.rate_limit_name, self.rate_limit)
            return self._limiter

    # -- the map ------------------------------------------------------------------------
    def map_outcomes(
        self,
        fn: Callable[[T], R],
        items: Sequence[T],
        *,
        cancel: threading.Event | None = None,
        on_outcome: OutcomeCallback | None = None,
    ) -> list[Outcome[R]]:
        """Run ``fn`` on every item as Ray tasks; see
        :meth:`dspy_actors.evaluate._executor.Executor.map_outcomes`."""
        if not items:
            return []
        self.connect()
        import ray

        from dspy_actors.distributed._ray_tasks import run_chunk

        lm = _base_lm(self.lm if self.lm is not None else settings.get("lm"))
        lm_state = None if lm is None else lm.dump_state()
        overrides = {k: v for k, v in settings.current().items() if k in _PORTABLE_SETTINGS}
        size = self.chunk_size or self._default_chunk(len(items))
        fn_ref = ray.put(fn)
        limiter = self.limiter()
        # SPREAD: chunks go to every node, not first to the driver's until it is full.
        task = run_chunk.options(
            max_retries=self.max_retries, retry_exceptions=False, scheduling_strategy="SPREAD"
        )
        pending: dict[Any, int] = {}
        for start in range(0, len(items), size):
            chunk = list(items[start : start + size])
            ref = task.remote(fn_ref, chunk, lm_state, overrides, limiter, self.threads_per_task)
            pending[ref] = start
        results: dict[int, Outcome[R]] = {}
        deadline = time.monotonic() + self.timeout
        try:
            while pending:
                if cancel is not None and cancel.is_set():
                    raise Cancelled("cancelled")
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"{len(pending)} of the map's Ray tasks were not done in {self.timeout}s"
                    )
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=_POLL_SECONDS)
                for ref in ready:
                    start = pending.pop(ref)
                    outcomes = self._chunk_outcomes(ref, min(size, len(items) - start))
                    for offset, outcome in enumerate(outcomes):
                        results[start + offset] = outcome
                        if on_outcome is not None:
                            on_outcome(start + offset, outcome)
        finally:
            for ref in pending:  # stopped early: the rest is not wanted
                ray.cancel(ref, force=False)
        return [results[i] for i in range(len(items))]

    def _chunk_outcomes(self, ref: Any, count: int) -> list[Outcome[Any]]:
        import ray

        try:
            node, outcomes = ray.get(ref, timeout=self.timeout)
        except (ray.exceptions.RayError, TimeoutError) as exc:
            # Out of retries (every node it ran on died) or the task itself broke: every
            # item of the chunk fails with that reason; nothing is left unanswered.
            _log.warning("ray chunk failed", error=type(exc).__name__)
            error = RuntimeError(f"a Ray task failed: {type(exc).__name__}: {exc}")
            return [Outcome(error=error) for _ in range(count)]
        with self._lock:
            self.stats.chunks_by_node[str(node)] += 1
            self.stats.chunks += 1
            self.stats.items += len(outcomes)
        return list(outcomes)

    def _default_chunk(self, n: int) -> int:
        import ray

        resources: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]
        cpus = max(1, int(resources.get("CPU", 1)))
        return max(1, math.ceil(n / (4 * cpus)))

    def __repr__(self) -> str:
        return f"RayExecutor({self.address!r})"
