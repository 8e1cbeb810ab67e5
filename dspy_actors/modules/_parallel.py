"""``Parallel``: run (module, example) pairs on several threads at once, as DSPy's does.

``Parallel(num_threads=8, max_errors=10)(pairs)`` returns each pair's result in order, None
for a pair that failed. When failures reach ``max_errors``, no more pairs start and
:class:`ParallelError` is raised (the first failure is its cause).
``return_failed_examples=True`` returns ``(results, failed_examples, exceptions)`` instead.

Inside a served composite, the pairs' modules are actors: the pairs then run on their
actors at once, ``num_threads`` at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from dspy_actors.modules._fan_out import NotRun, Outcome, fan_out
from dspy_actors.primitives.example import Example
from dspy_actors.primitives.module import register_batch_runner

__all__ = ["Parallel", "ParallelError"]

DEFAULT_NUM_THREADS = 8  # DSPy's settings.num_threads default
DEFAULT_MAX_ERRORS = 10  # DSPy's settings.max_errors default


class ParallelError(RuntimeError):
    """Too many pairs failed: the run stopped (``errors`` holds each failure by index)."""

    def __init__(self, message: str, errors: dict[int, BaseException]) -> None:
        super().__init__(message)
        self.errors = errors


class Parallel:
    """See the module docstring. ``access_examples``: an :class:`Example` is passed as its
    inputs' keywords (else as one argument); a dict as keywords; a tuple as positional
    arguments; a list to a nested ``Parallel``. ``timeout`` bounds the whole run: a pair
    still running then counts as failed with a ``FanOutTimeout``."""

    def __init__(
        self,
        num_threads: int | None = None,
        max_errors: int | None = None,
        access_examples: bool = True,
        return_failed_examples: bool = False,
        provide_traceback: bool | None = None,
        disable_progress_bar: bool = False,
        timeout: float = 600.0,
        straggler_limit: int = 3,
    ) -> None:
        self.num_threads = num_threads or DEFAULT_NUM_THREADS
        self.max_errors = DEFAULT_MAX_ERRORS if max_errors is None else max_errors
        self.access_examples = access_examples
        self.return_failed_examples = return_failed_examples
        # Accepted for DSPy compatibility: failures are logged by the caller's own code,
        # there is no progress bar, and a straggler is bounded by ``timeout``.
        self.provide_traceback = provide_traceback
        self.disable_progress_bar = disable_progress_bar
        self.timeout = timeout
        self.straggler_limit = straggler_limit

    def __call__(
        self, exec_pairs: Sequence[tuple[Any, Any]], num_threads: int | None = None
    ) -> Any:
        return self.forward(exec_pairs, num_threads)

    def forward(self, exec_pairs: Sequence[tuple[Any, Any]], num_threads: int | None = None) -> Any:
        pairs = list(exec_pairs)
        calls = [self._call(i, pair) for i, pair in enumerate(pairs)]
        max_errors = self.max_errors

        def too_many(outcomes: Sequence[Outcome[Any] | None]) -> bool:
            failed = sum(1 for o in outcomes if o is not None and not o.ok)
            return failed > 0 and failed >= max_errors

        outcomes = fan_out(
            calls,
            max_workers=num_threads or self.num_threads,
            timeout=self.timeout,
            stop=too_many,
            thread_name_prefix="dsa-parallel",
        )
        errors = {
            i: o.error
            for i, o in enumerate(outcomes)
            if o.error is not None and not isinstance(o.error, NotRun)
        }
        if len(errors) >= max_errors and errors:
            first = errors[min(errors)]
            raise ParallelError(
                f"Parallel stopped after {len(errors)} of {len(pairs)} pairs failed "
                f"(max_errors={max_errors}); first failure, pair {min(errors)}: "
                f"{type(first).__name__}: {first}",
                errors,
            ) from first
        results = [o.value if o.ok else None for o in outcomes]
        if self.return_failed_examples:
            failed = [pairs[i][1] for i in sorted(errors)]
            return results, failed, [errors[i] for i in sorted(errors)]
        return results

    def _call(self, index: int, pair: tuple[Any, Any]) -> Callable[[], Any]:
        if not isinstance(pair, tuple | list) or len(pair) != 2:
            raise TypeError(f"Parallel: pair {index} is {pair!r}, not a (module, example) pair")
        module, example = pair
        if isinstance(example, Example):
            if self.access_examples:
                return lambda: module(**example.inputs().to_dict())
            return lambda: module(example)
        if isinstance(example, dict):
            return lambda: module(**example)
        if isinstance(example, list) and isinstance(module, Parallel):
            return lambda: module(example)
        if isinstance(example, tuple):
            return lambda: module(*example)
        raise TypeError(
            f"Parallel: pair {index} has a {type(example).__name__} example; use an Example, "
            "dict, tuple, or a list for a nested Parallel"
        )


def _batch(module: Any, examples: Sequence[Example], **options: Any) -> Any:
    """``Module.batch``: ``module`` on each example's inputs through a ``Parallel``."""
    return Parallel(**options)([(module, example.inputs()) for example in examples])


register_batch_runner(_batch)
