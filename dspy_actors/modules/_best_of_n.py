"""``BestOfN``: run a module up to N times, varied, and keep the best-rewarded prediction.

As DSPy's: attempt ``i`` runs at ``temperature=1.0`` with ``rollout_id = start + i`` (so
each attempt is a distinct LM call and cache entry; ``start`` is the ``rollout_id`` already
in force, else 0); the first attempt whose reward reaches ``threshold`` wins, else the
highest-rewarded one. Up to ``fail_count`` failed attempts are tolerated.

Served (its module is an actor), the attempts run at once, at most ``max_in_flight`` at a
time, rather than one after another; once one reaches the threshold no more start, and the
winner is chosen in attempt order as above, among the attempts that ran.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from dspy_actors import _settings as settings
from dspy_actors.modules._fan_out import NotRun, Outcome, fan_out, is_served
from dspy_actors.primitives.module import Module
from dspy_actors.primitives.prediction import Prediction

__all__ = ["BestOfN", "FailureBudget", "RewardFn", "rollout_start", "run_one"]

T = TypeVar("T")

RewardFn = Callable[[dict[str, Any], Prediction], float]
_log = logging.getLogger(__name__)

# How long a served fan-out waits for all its attempts (each attempt's own calls are bounded
# by the call's deadline and the runtime's call timeout; this only bounds the waiting).
FAN_OUT_TIMEOUT_SECONDS = 600.0


def rollout_start(module: Any) -> int:
    """The ``rollout_id`` already in force for ``module``: the settings', else its LM's
    default, else 0."""
    start = settings.get("rollout_id")
    if start is None:
        get_lm = getattr(module, "get_lm", None)
        lm = None
        if callable(get_lm):
            try:
                lm = get_lm()
            except ValueError:  # predictors with different LMs: no single default
                lm = None
        lm = lm or settings.get("lm")
        start = getattr(lm, "defaults", {}).get("rollout_id", 0) if lm is not None else 0
    return int(start or 0)


class FailureBudget:
    """Counts failed attempts; the one that makes them exceed ``fail_count`` is raised."""

    def __init__(self, owner: str, fail_count: int) -> None:
        self.owner = owner
        self.fail_count = fail_count
        self.failures = 0

    def failed(self, attempt: int, rollout_id: int, error: BaseException) -> None:
        self.failures += 1
        _log.warning(
            "%s: attempt %d (rollout_id %d) failed: %s: %s",
            self.owner,
            attempt + 1,
            rollout_id,
            type(error).__name__,
            error,
        )
        if self.failures > self.fail_count:
            raise error


def check_attempt_args(owner: str, N: int, fail_count: int | None) -> int:
    if not isinstance(N, int) or N < 1:
        raise ValueError(f"{owner}(N={N!r}): N must be a positive int")
    if fail_count is not None and (not isinstance(fail_count, int) or fail_count < 0):
        raise ValueError(f"{owner}(fail_count={fail_count!r}): must be an int >= 0")
    return N if fail_count is None else fail_count


class BestOfN(Module):
    """Runs ``module`` up to ``N`` times and returns the best prediction by ``reward_fn``.

    ``reward_fn(inputs, prediction) -> float``; ``threshold``: the first attempt whose
    reward is at least this wins at once; ``fail_count`` (default ``N``): failed attempts
    tolerated before the next failure is raised. If every attempt fails, the last error
    is raised (DSPy would return None).

    >>> best = BestOfN(Predict("question -> answer"), N=3, reward_fn=one_word, threshold=1.0)
    """

    def __init__(
        self,
        module: Module,
        N: int,
        reward_fn: RewardFn,
        threshold: float,
        fail_count: int | None = None,
        *,
        max_in_flight: int | None = None,
    ) -> None:
        self.fail_count = check_attempt_args("BestOfN", N, fail_count)
        self.module = module
        self.N = N
        self.reward_fn = reward_fn
        self.threshold = threshold
        self.max_in_flight = max_in_flight or N

    def forward(self, **kwargs: Any) -> Prediction:
        start = rollout_start(self.module)
        attempts = [self._attempt(kwargs, start + i) for i in range(self.N)]
        budget = FailureBudget("BestOfN", self.fail_count)
        outcomes: list[Outcome[tuple[Prediction, float]]] = []
        if is_served(self.module):
            outcomes = fan_out(
                attempts,
                max_workers=self.max_in_flight,
                timeout=FAN_OUT_TIMEOUT_SECONDS,
                stop=self._reached_threshold,
            )
            for index, outcome in enumerate(outcomes):  # failures counted in attempt order
                if outcome.error is not None and not isinstance(outcome.error, NotRun):
                    budget.failed(index, start + index, outcome.error)
        else:
            for index, attempt in enumerate(attempts):  # one after another, as DSPy does
                outcome = run_one(attempt)
                outcomes.append(outcome)
                if outcome.error is not None:
                    budget.failed(index, start + index, outcome.error)
                elif outcome.value is not None and outcome.value[1] >= self.threshold:
                    break
        return self._choose(outcomes)

    def _attempt(
        self, kwargs: Mapping[str, Any], rollout_id: int
    ) -> Callable[[], tuple[Prediction, float]]:
        def run() -> tuple[Prediction, float]:
            with settings.context(rollout_id=rollout_id, temperature=1.0):
                prediction = self.module(**kwargs)
            return prediction, float(self.reward_fn(dict(kwargs), prediction))

        return run

    def _reached_threshold(self, outcomes: Any) -> bool:
        return any(
            o is not None and o.ok and o.value is not None and o.value[1] >= self.threshold
            for o in outcomes
        )

    def _choose(self, outcomes: list[Outcome[tuple[Prediction, float]]]) -> Prediction:
        best: Prediction | None = None
        best_reward = -float("inf")
        last_error: BaseException | None = None
        for outcome in outcomes:
            if outcome.error is not None:
                if not isinstance(outcome.error, NotRun):
                    last_error = outcome.error
                continue
            assert outcome.value is not None
            prediction, reward = outcome.value
            if best is None or reward > best_reward:
                best, best_reward = prediction, reward
            if reward >= self.threshold:
                break
        if best is None:
            assert last_error is not None
            raise last_error
        return best


def run_one(call: Callable[[], T]) -> Outcome[T]:
    """``call()``'s outcome: its value, or the exception it raised."""
    try:
        return Outcome(value=call())
    except Exception as error:
        return Outcome(error=error)
