"""Stream: lazy, bounded-in-flight pipelines of calls through served programs.

    results = (
        Stream.from_iterable(questions)            # dicts of inputs
        .through(qa, concurrency=16)               # at most 16 calls in flight
        .batch(100)                                 # lists of 100 results
        .to_list()
    )

Nothing runs until the stream is iterated; items are pulled from the source only as
capacity frees up, so an endless source is fine. Results come in input order by default
(``ordered=False``: as they complete).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import Any, Generic, Protocol, TypeVar

T = TypeVar("T")
U = TypeVar("U")

# A result wait never blocks longer than this without re-checking (never forever).
_WAIT_SLICE_SECONDS = 1.0


class Submits(Protocol):
    """Anything with ``submit(**inputs) -> Future`` (a ProgramHandle)."""

    def submit(self, **inputs: Any) -> Future[Any]: ...


class Stream(Generic[T]):
    """A lazy sequence of items; see the module docstring."""

    def __init__(self, source: Callable[[], Iterator[T]]) -> None:
        self._source = source

    @classmethod
    def from_iterable(cls, items: Iterable[T]) -> Stream[T]:
        return cls(lambda: iter(items))

    def __iter__(self) -> Iterator[T]:
        return self._source()

    def map(self, fn: Callable[[T], U]) -> Stream[U]:
        return Stream(lambda: (fn(item) for item in self._source()))

    def batch(self, size: int) -> Stream[list[T]]:
        """Group items into lists of ``size`` (the last may be shorter)."""
        if size < 1:
            raise ValueError(f"batch size must be >= 1, got {size!r}")

        def batches() -> Iterator[list[T]]:
            chunk: list[T] = []
            for item in self._source():
                chunk.append(item)
                if len(chunk) == size:
                    yield chunk
                    chunk = []
            if chunk:
                yield chunk

        return Stream(batches)

    def through(
        self,
        target: Submits,
        *,
        concurrency: int = 8,
        ordered: bool = True,
        return_exceptions: bool = False,
    ) -> Stream[Any]:
        """Call ``target`` on each item (a mapping of inputs), at most ``concurrency`` at
        once. A failed call raises when its result is reached, or is yielded as the
        exception with ``return_exceptions=True``."""
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency!r}")

        def results() -> Iterator[Any]:
            source = iter(self._source())
            in_flight: deque[Future[Any]] = deque()
            exhausted = False
            try:
                while True:
                    while not exhausted and len(in_flight) < concurrency:
                        try:
                            item = next(source)
                        except StopIteration:
                            exhausted = True
                            break
                        in_flight.append(_submit(target, item))
                    if not in_flight:
                        return
                    if ordered:
                        done = in_flight.popleft()
                        _wait_done(done)
                    else:
                        finished, _ = wait(
                            in_flight, timeout=_WAIT_SLICE_SECONDS, return_when=FIRST_COMPLETED
                        )
                        if not finished:
                            continue
                        done = next(iter(finished))
                        in_flight.remove(done)
                    yield _outcome(done, return_exceptions)
            finally:
                for future in in_flight:  # the consumer stopped early: drop what is left
                    future.cancel()

        return Stream(results)

    def to_list(self) -> list[T]:
        return list(self._source())


def _submit(target: Submits, item: Any) -> Future[Any]:
    if not isinstance(item, Mapping):
        failed: Future[Any] = Future()
        failed.set_exception(
            TypeError(f"stream items sent through a program are dicts of inputs, got {item!r}")
        )
        return failed
    return target.submit(**item)


def _wait_done(future: Future[Any]) -> None:
    while not future.done():
        wait([future], timeout=_WAIT_SLICE_SECONDS)


def _outcome(future: Future[Any], return_exceptions: bool) -> Any:
    if future.cancelled():
        from concurrent.futures import CancelledError

        error: BaseException = CancelledError("call cancelled")
    else:
        exc = future.exception(timeout=0)
        if exc is None:
            return future.result(timeout=0)
        error = exc
    if return_exceptions:
        return error
    raise error
