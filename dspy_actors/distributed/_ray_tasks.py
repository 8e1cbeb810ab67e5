"""What runs on a Ray worker: one chunk of items through the caller's function, on local
threads, under the caller's LM and settings. Imports Ray (only RayExecutor imports this)."""

from __future__ import annotations

import json
import pickle
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ray

from dspy_actors import _settings as settings
from dspy_actors.distributed._rate_limit import ClusterRateLimitedLM
from dspy_actors.evaluate._executor import Outcome
from dspy_actors.evaluate._parallel import parallel_map
from dspy_actors.lm._base_lm import LM_CLASS_STATE_KEY, BaseLM
from dspy_actors.lm._lm import LM

__all__ = ["run_chunk"]

# One LM client per configuration per worker process: its connections and cache outlive
# a chunk, as they would in one process.
_lms: dict[str, LM | BaseLM] = {}
_lms_lock = threading.Lock()


def _worker_lm(state: Mapping[str, Any]) -> LM | BaseLM:
    key = json.dumps(state, sort_keys=True, default=repr)
    with _lms_lock:
        lm = _lms.get(key)
        if lm is None:
            fields = dict(state)
            if LM_CLASS_STATE_KEY in fields:
                # A custom LM: its class, by the import path the driver's own dump_state
                # recorded (the driver's state, so trusted), importable on every node
                # as the task's functions are.
                lm = BaseLM.load_state(fields, allow_custom_lm_class=True)
            else:
                lm = LM(fields.pop("model"), **fields)
            _lms[key] = lm
        return lm


def _portable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling (the driver raises the same type), else a
    RuntimeError naming it."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc


def _chunk(
    fn: Callable[[Any], Any],
    items: Sequence[Any],
    lm_state: Mapping[str, Any] | None,
    overrides: Mapping[str, Any],
    limiter: Any,
    threads: int,
) -> tuple[str, list[Outcome[Any]]]:
    def guarded(item: Any) -> Outcome[Any]:
        try:
            return Outcome(value=fn(item))
        except Exception as exc:
            return Outcome(error=_portable(exc))

    values = dict(overrides)
    if lm_state is not None:
        lm: Any = _worker_lm(lm_state)
        values["lm"] = lm if limiter is None else ClusterRateLimitedLM(lm, limiter)
    with settings.context(**values):
        outcomes = parallel_map(guarded, list(items), num_threads=threads, local=True)
    return ray.get_runtime_context().get_node_id(), outcomes


run_chunk: Any = ray.remote(num_cpus=1)(_chunk)
