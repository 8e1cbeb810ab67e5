"""The executor seam (evaluate/_executor.py) without Ray: parallel_map and Evaluate hand
their items to the current executor; a plan's steps stay local; RunContext and an
instrumented program pickle (what a remote executor needs)."""

from __future__ import annotations

import pickle
import threading
from collections.abc import Callable, Sequence
from typing import Any

import pytest

import dspy_actors as dsa
from dspy_actors.evaluate._executor import Outcome, OutcomeCallback, use_executor
from dspy_actors.evaluate._parallel import parallel_map
from dspy_actors.optimizers._base import RunContext
from dspy_actors.optimizers._program import instrument


class PicklingExecutor:
    """Runs each item after a pickle round trip of the function, as another process would
    (with cloudpickle, as Ray does, when given: signatures are classes made at run time)."""

    def __init__(self, dumps: Callable[[Any], bytes] = pickle.dumps) -> None:
        self.maps: list[int] = []
        self.dumps = dumps

    def map_outcomes(
        self,
        fn: Callable[[Any], Any],
        items: Sequence[Any],
        *,
        cancel: threading.Event | None = None,
        on_outcome: OutcomeCallback | None = None,
    ) -> list[Outcome[Any]]:
        self.maps.append(len(items))
        shipped = pickle.loads(self.dumps(fn))
        outs: list[Outcome[Any]] = []
        for i, item in enumerate(items):
            try:
                out: Outcome[Any] = Outcome(value=shipped(item))
            except Exception as exc:
                out = Outcome(error=exc)
            outs.append(out)
            if on_outcome is not None:
                on_outcome(i, out)
        return outs


def double(x: int) -> int:
    return 2 * x


def invert(x: int) -> int:
    return 1 // x


def test_parallel_map_goes_through_the_executor_unless_local() -> None:
    executor = PicklingExecutor()
    with use_executor(executor):
        assert parallel_map(double, [1, 2, 3], num_threads=2) == [2, 4, 6]
        assert parallel_map(double, [4], num_threads=2, local=True) == [8]
        with pytest.raises(ZeroDivisionError):
            parallel_map(invert, [1, 0], num_threads=2)
    assert parallel_map(double, [5], num_threads=2) == [10]
    assert executor.maps == [3, 2]  # the local map and the one outside the block stayed here


def exact(example: Any, prediction: Any, trace: Any = None) -> bool:
    return bool(prediction.answer)


def test_evaluate_runs_a_module_through_the_executor(sim_lm: Any) -> None:
    lm = dsa.LM("openai/sim", api_base=sim_lm.openai_base, api_key="k", cache=False)
    dev = [dsa.Example(question=f"q{i}", answer="a").with_inputs("question") for i in range(4)]
    cloudpickle = pytest.importorskip("ray.cloudpickle")
    executor = PicklingExecutor(cloudpickle.dumps)
    try:
        with dsa.context(lm=lm):
            result = dsa.Evaluate(devset=dev, metric=exact, progress=False, executor=executor)(
                instrument(dsa.Predict("question -> answer"))
            )
    finally:
        lm.close()
    assert executor.maps == [4]
    assert result.score == 100.0
    assert len(result.results) == 4
    with pytest.raises(ValueError, match="does not take a timeout"):
        dsa.Evaluate(devset=dev, metric=exact, timeout=5, executor=executor)(dsa.Predict("q -> a"))


def test_a_run_context_pickles_as_a_fresh_local_one() -> None:
    ctx = RunContext(seed=7, num_threads=3, max_errors=2)
    ctx.cancel.set()
    copy = pickle.loads(pickle.dumps(ctx))
    assert (copy.seed, copy.num_threads, copy.max_errors) == (7, 3, 2)
    assert not copy.cancel.is_set()  # the driver cancels remote work by cancelling tasks
