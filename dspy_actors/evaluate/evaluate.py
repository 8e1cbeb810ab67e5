"""``Evaluate``: run a program over a devset in parallel and score it with a metric.

    evaluate = Evaluate(devset=dev, metric=answer_exact_match, concurrency=16, timeout=30)
    result = evaluate(program)          # a Module, or a served ProgramHandle
    print(result.score)                 # percent, as in DSPy
    result.to_csv("results.csv")

Examples run on at most ``concurrency`` threads. An example still running ``timeout``
seconds after it started is a straggler: it is failed (``TimeoutError``), or with
``retry_stragglers`` started once more first. Python cannot stop a thread, so a straggler's
call is abandoned, not killed: its thread ends when its LM call returns, and its late answer
is ignored. Errors (from the program or the metric) score ``failure_score``; more than
``max_errors`` of them stop the run with :class:`EvaluationError`, which carries what was
finished. Ctrl-C stops the run cleanly and raises ``KeyboardInterrupt`` as DSPy does (its
``partial_result`` attribute holds what finished); a ``cancel`` event returns what finished
(``interrupted`` is True). With one thread (``num_threads=1``) and no ``timeout``, examples
run inline in the calling thread, as in DSPy.

With an executor (``executor=``, or an enclosing ``use_executor(...)``, see
evaluate/_executor.py), a Module's examples run wherever the executor sends them (a Ray
cluster: ``dspy_actors.distributed.RayExecutor``); a served handle, or a ``timeout``
(stragglers are a local thread's matter), keeps them on local threads.

Over 400 lines: ``Evaluate`` and its result carry DSPy's many options (threads, stragglers,
errors, Ctrl-C, executors, CSV/JSON); the fan-out itself is _parallel.py.
"""

from __future__ import annotations

import contextvars
import copy
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, TextIO

from dspy_actors.evaluate._executor import Executor, Outcome, current_executor
from dspy_actors.evaluate._parallel import Cancelled
from dspy_actors.evaluate._result import EvaluationResult, ExampleResult
from dspy_actors.evaluate.metrics import Metric, call_metric, metric_name, metric_score
from dspy_actors.primitives.example import Example
from dspy_actors.primitives.module import Module

__all__ = ["Evaluate", "EvaluationError", "ProgressCallback"]

_POLL_SECONDS = 0.02

ProgressCallback = Callable[[int, int, float], None]
"""``on_progress(completed, total, score_so_far_percent)``."""


class EvaluationError(RuntimeError):
    """Too many examples failed; ``result`` holds what was finished before stopping."""

    def __init__(self, message: str, result: EvaluationResult) -> None:
        super().__init__(message)
        self.result = result


@dataclass
class _Task:
    index: int
    attempt: int
    started: float | None = None


class _ScoreOne:
    """One example's prediction and score: the unit of work an executor ships elsewhere
    (a plain object, so it pickles with the program and metric it holds)."""

    def __init__(self, program: Module, metric: Metric) -> None:
        self.program = program
        self.metric = metric

    def __call__(self, example: Example) -> tuple[Any, float]:
        prediction = self.program(**example.inputs().to_dict())
        return prediction, metric_score(call_metric(self.metric, example, prediction))


def program_caller(program: Any, timeout: float | None) -> Callable[[Mapping[str, Any]], Any]:
    """How to call ``program`` with an input dict: a Module or any callable with
    ``**inputs``; a served handle through ``call_with`` (so the runtime enforces the
    timeout as its deadline) or ``submit``."""
    if isinstance(program, Module):
        return lambda inputs: program(**inputs)
    call_with = getattr(program, "call_with", None)
    if callable(call_with):
        if timeout is None:
            return lambda inputs: call_with(inputs)
        return lambda inputs: call_with(inputs, timeout=timeout)
    submit = getattr(program, "submit", None)
    if callable(submit):
        wait_s = 3600.0 if timeout is None else timeout * 2
        return lambda inputs: submit(**inputs).result(timeout=wait_s)
    if callable(program):
        return lambda inputs: program(**inputs)
    raise TypeError(
        f"cannot evaluate a {type(program).__name__}: pass a Module, a served ProgramHandle, "
        "or a callable taking the inputs as keyword arguments"
    )


class Evaluate:
    """Score a program on ``devset`` with ``metric``; see the module docstring.

    DSPy's names work (``num_threads``, ``display_progress``, ``display_table``,
    ``save_as_csv``, ``save_as_json``, ``max_errors``, ``failure_score``) and are the
    attributes; ``concurrency`` and ``progress`` are the same settings under this
    project's names. ``max_errors`` = None allows any number of errors; ``timeout`` is
    seconds per example (None: no limit); ``display_table`` prints the results table (True,
    or the number of rows) when the run ends; ``save_as_csv``/``save_as_json`` write the
    rows (DSPy's layout: example fields, prediction fields, and the metric's name holding
    the score) to that file. ``executor`` runs the examples elsewhere (see the module
    docstring); it needs a Module (not a served handle) and no ``timeout``.
    """

    def __init__(
        self,
        *,
        devset: Sequence[Example],
        metric: Metric | None = None,
        concurrency: int = 8,
        max_errors: int | None = None,
        failure_score: float = 0.0,
        timeout: float | None = None,
        retry_stragglers: bool = False,
        progress: bool = True,
        display_table: bool | int = False,
        num_threads: int | None = None,
        display_progress: bool | None = None,
        save_as_csv: str | os.PathLike[str] | None = None,
        save_as_json: str | os.PathLike[str] | None = None,
        provide_traceback: bool | None = None,
        stream: TextIO | None = None,
        executor: Executor | None = None,
    ) -> None:
        self.devset = list(devset)
        self.executor = executor
        self.metric = metric
        self.num_threads = num_threads if num_threads is not None else concurrency
        self.max_errors = max_errors
        self.failure_score = float(failure_score)
        self.timeout = timeout
        self.retry_stragglers = retry_stragglers
        self.display_progress = progress if display_progress is None else display_progress
        self.display_table = display_table
        self.save_as_csv = save_as_csv
        self.save_as_json = save_as_json
        self.provide_traceback = provide_traceback
        self.stream = stream

    @property
    def num_threads(self) -> int:
        """Examples in flight at most (``concurrency`` is the same setting)."""
        return self.concurrency

    @num_threads.setter
    def num_threads(self, value: int) -> None:
        self.concurrency = max(1, int(value))

    @property
    def display_progress(self) -> bool:
        """Whether a progress line is printed (``progress`` is the same setting)."""
        return self.progress

    @display_progress.setter
    def display_progress(self, value: bool) -> None:
        self.progress = bool(value)

    def __call__(
        self,
        program: Any,
        metric: Metric | None = None,
        devset: Sequence[Example] | None = None,
        num_threads: int | None = None,
        display_progress: bool | None = None,
        display_table: bool | int | None = None,
        save_as_csv: str | os.PathLike[str] | None = None,
        save_as_json: str | os.PathLike[str] | None = None,
        *,
        cancel: threading.Event | None = None,
        on_progress: ProgressCallback | None = None,
        limiter: threading.Semaphore | None = None,
    ) -> EvaluationResult:
        """Evaluate ``program`` (a Module or served handle) and return the result; the
        arguments override the constructor's for this run, as in DSPy.

        ``cancel`` stops the run early and returns what finished; ``limiter`` (a semaphore
        shared with other work, as an optimizer's candidates share one) is held while an
        example runs."""
        run = copy.copy(self)
        if metric is not None:
            run.metric = metric
        if num_threads is not None:
            run.num_threads = num_threads
        if display_progress is not None:
            run.display_progress = display_progress
        if display_table is not None:
            run.display_table = display_table
        if run.metric is None:
            raise TypeError("Evaluate needs a metric: Evaluate(devset=..., metric=...)")
        examples = list(devset) if devset is not None else self.devset
        executor = run._executor_for(program)
        if executor is not None:
            result = run._run_on(executor, program, examples, cancel, on_progress)
        else:
            result = run._run(program, examples, cancel, on_progress, limiter)
        if run.display_table:
            rows = None if run.display_table is True else int(run.display_table)
            print(result.table(max_rows=rows), file=run._out())
        name = metric_name(run.metric)
        csv_path = save_as_csv if save_as_csv is not None else self.save_as_csv
        json_path = save_as_json if save_as_json is not None else self.save_as_json
        if csv_path:
            result.save_as_csv(csv_path, name)
        if json_path:
            result.save_as_json(json_path, name)
        return result

    # -- the run ------------------------------------------------------------------------
    def _executor_for(self, program: Any) -> Executor | None:
        if self.executor is None:
            executor = current_executor()
            local = not isinstance(program, Module) or self.timeout is not None
            return None if local else executor
        if not isinstance(program, Module):
            raise TypeError(
                f"Evaluate(executor=...) runs a Module on other workers; a "
                f"{type(program).__name__} can only be evaluated here (drop executor=)"
            )
        if self.timeout is not None:
            raise ValueError(
                "Evaluate(executor=...) does not take a timeout (stragglers are abandoned "
                "local threads); drop timeout= or executor="
            )
        return self.executor

    def _run_on(
        self,
        executor: Executor,
        program: Module,
        examples: list[Example],
        cancel: threading.Event | None,
        on_progress: ProgressCallback | None,
    ) -> EvaluationResult:
        """The examples through ``executor``; results arrive as each batch finishes."""
        assert self.metric is not None
        n = len(examples)
        slots: list[ExampleResult | None] = [None] * n
        counts = {"done": 0, "errors": 0, "timed_out": 0}
        total = [0.0]

        def arrived(index: int, outcome: Outcome[Any]) -> None:
            if outcome.error is not None:
                score, prediction = self.failure_score, None
                counts["errors"] += 1
            else:
                value: tuple[Any, float] = outcome.value  # type: ignore[assignment]
                prediction, score = value
            slots[index] = ExampleResult(examples[index], prediction, score, outcome.error)
            counts["done"] += 1
            total[0] += score
            self._report(counts["done"], n, total[0], on_progress)
            if self.max_errors is not None and counts["errors"] > self.max_errors:
                partial = self._result(slots, n, counts, total[0], interrupted=True)
                raise EvaluationError(
                    f"evaluation stopped: {counts['errors']} examples failed "
                    f"(max_errors={self.max_errors}); last error: {self._last_error(slots)}",
                    partial,
                )

        interrupted = False
        try:
            executor.map_outcomes(
                _ScoreOne(program, self.metric), examples, cancel=cancel, on_outcome=arrived
            )
        except Cancelled:
            interrupted = True
        finally:
            if self.progress:
                print(file=self._out())
        return self._result(slots, n, counts, total[0], interrupted)

    def _out(self) -> TextIO:
        return self.stream if self.stream is not None else sys.stderr

    def _work(
        self,
        call: Callable[[Mapping[str, Any]], Any],
        example: Example,
        task: _Task,
        limiter: threading.Semaphore | None,
    ) -> tuple[Any, float]:
        if limiter is None:
            return self._one(call, example, task)
        with limiter:
            return self._one(call, example, task)

    def _one(
        self, call: Callable[[Mapping[str, Any]], Any], example: Example, task: _Task
    ) -> tuple[Any, float]:
        assert self.metric is not None
        task.started = time.monotonic()
        prediction = call(example.inputs().to_dict())
        return prediction, metric_score(call_metric(self.metric, example, prediction))

    def _run_inline(
        self,
        call: Callable[[Mapping[str, Any]], Any],
        examples: list[Example],
        cancel: threading.Event | None,
        limiter: threading.Semaphore | None,
        finish: Callable[[int, Any, float, BaseException | None], None],
        stop_if_too_many: Callable[[], None],
    ) -> bool:
        """One example after another in this thread (``num_threads=1``, no timeout, as
        DSPy runs it); True if ``cancel`` stopped it early."""
        for index, example in enumerate(examples):
            if cancel is not None and cancel.is_set():
                return True
            try:
                prediction, score = self._work(call, example, _Task(index, 0), limiter)
            except Exception as exc:
                finish(index, None, self.failure_score, exc)
            else:
                finish(index, prediction, score, None)
            stop_if_too_many()
        return False

    def _run(
        self,
        program: Any,
        examples: list[Example],
        cancel: threading.Event | None,
        on_progress: ProgressCallback | None,
        limiter: threading.Semaphore | None = None,
    ) -> EvaluationResult:
        call = program_caller(program, self.timeout)
        n = len(examples)
        slots: list[ExampleResult | None] = [None] * n
        pending: deque[_Task] = deque(_Task(i, 0) for i in range(n))
        live: dict[Future[tuple[Any, float]], _Task] = {}
        counts = {"done": 0, "errors": 0, "timed_out": 0}
        total_score = 0.0
        interrupted = False
        # Room for abandoned stragglers: they hold a thread until their call returns.
        workers = self.concurrency * (2 if self.timeout is not None else 1)
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dsa-evaluate")

        def finish(index: int, prediction: Any, score: float, error: BaseException | None) -> None:
            nonlocal total_score
            slots[index] = ExampleResult(examples[index], prediction, score, error)
            counts["done"] += 1
            total_score += score
            if error is not None:
                counts["errors"] += 1
            self._report(counts["done"], n, total_score, on_progress)

        def stop_if_too_many() -> None:
            if self.max_errors is not None and counts["errors"] > self.max_errors:
                partial = self._result(slots, n, counts, total_score, interrupted=True)
                raise EvaluationError(
                    f"evaluation stopped: {counts['errors']} examples failed "
                    f"(max_errors={self.max_errors}); last error: {self._last_error(slots)}",
                    partial,
                )

        try:
            if self.concurrency == 1 and self.timeout is None:
                interrupted = self._run_inline(
                    call, examples, cancel, limiter, finish, stop_if_too_many
                )
                pending.clear()
            while pending or live:
                if cancel is not None and cancel.is_set():
                    interrupted = True
                    break
                while pending and len(live) < self.concurrency:
                    task = pending.popleft()
                    ctx = contextvars.copy_context()
                    fut = pool.submit(
                        ctx.run, self._work, call, examples[task.index], task, limiter
                    )
                    live[fut] = task
                done, _ = wait(list(live), timeout=_POLL_SECONDS, return_when=FIRST_COMPLETED)
                for fut in done:
                    task = live.pop(fut)
                    exc = fut.exception()
                    if exc is not None:
                        finish(task.index, None, self.failure_score, exc)
                    else:
                        prediction, score = fut.result()
                        finish(task.index, prediction, score, None)
                if self.timeout is not None:
                    self._fail_stragglers(live, pending, finish, counts)
                stop_if_too_many()
        except KeyboardInterrupt as stop:
            # Ctrl-C: stop, as DSPy does, by raising; what finished rides along.
            stop.partial_result = self._result(  # type: ignore[attr-defined]
                slots, n, counts, total_score, interrupted=True
            )
            raise
        finally:
            # Never wait here: a straggler or an interrupted call may still be running.
            pool.shutdown(wait=False, cancel_futures=True)
            if self.progress:
                print(file=self._out())
        return self._result(slots, n, counts, total_score, interrupted)

    def _fail_stragglers(
        self,
        live: dict[Future[tuple[Any, float]], _Task],
        pending: deque[_Task],
        finish: Callable[[int, Any, float, BaseException | None], None],
        counts: dict[str, int],
    ) -> None:
        assert self.timeout is not None
        now = time.monotonic()
        for fut, task in list(live.items()):
            if task.started is None or now - task.started <= self.timeout:
                continue
            del live[fut]  # abandoned: its late answer is ignored
            if self.retry_stragglers and task.attempt == 0:
                pending.appendleft(_Task(task.index, 1))
                continue
            counts["timed_out"] += 1
            error = TimeoutError(
                f"example {task.index} took longer than {self.timeout}s"
                + (" (twice)" if task.attempt else "")
            )
            finish(task.index, None, self.failure_score, error)

    @staticmethod
    def _last_error(slots: list[ExampleResult | None]) -> str:
        for slot in reversed(slots):
            if slot is not None and slot.error is not None:
                return f"{type(slot.error).__name__}: {slot.error}"
        return "none"

    def _report(
        self, done: int, total: int, score: float, on_progress: ProgressCallback | None
    ) -> None:
        percent = 100.0 * score / done if done else 0.0
        if on_progress is not None:
            on_progress(done, total, percent)
        if self.progress:
            out = self._out()
            out.write(f"\rEvaluated {done}/{total}  score {percent:.1f}%")
            out.flush()

    def _result(
        self,
        slots: list[ExampleResult | None],
        total: int,
        counts: dict[str, int],
        total_score: float,
        interrupted: bool,
    ) -> EvaluationResult:
        results = [s for s in slots if s is not None]
        score = round(100.0 * total_score / len(results), 2) if results else 0.0
        return EvaluationResult(
            score=score,
            results=results,
            total=total,
            interrupted=interrupted,
            errors=counts["errors"],
            timed_out=counts["timed_out"],
        )
