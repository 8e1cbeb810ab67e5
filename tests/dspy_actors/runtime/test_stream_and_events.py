"""Stream pipelines through handles, and the events a served call produces."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import pytest

from dspy_actors.modules._predict import Predict
from dspy_actors.runtime._events import Callback, LMEnd, LMStart, ModuleEnd, ModuleStart
from dspy_actors.runtime._stream import Stream
from dspy_actors.testing.sim_lm import SimLM
from tests.dspy_actors.runtime.conftest import StartApp


class Doubler:
    """A stand-in target: submit(**inputs) -> Future, tracking how many run at once."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.in_flight = 0
        self.peak = 0
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []

    def submit(self, **inputs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        future.set_running_or_notify_cancel()  # running from now: cancel() cannot race us

        def run() -> None:
            with self.lock:
                self.in_flight += 1
                self.peak = max(self.peak, self.in_flight)
            time.sleep(self.delay * (1 + inputs["x"] % 3))
            with self.lock:
                self.in_flight -= 1
            if inputs["x"] < 0:
                future.set_exception(ValueError(f"negative {inputs['x']}"))
            else:
                future.set_result(inputs["x"] * 2)

        thread = threading.Thread(target=run)
        self.threads.append(thread)
        thread.start()
        return future

    def join(self) -> None:
        for t in self.threads:
            t.join(timeout=10.0)


def test_stream_is_lazy_bounded_and_ordered() -> None:
    pulled: list[int] = []

    def source() -> Iterator[dict[str, int]]:
        for x in range(20):
            pulled.append(x)
            yield {"x": x}

    target = Doubler(delay=0.005)
    stream = Stream(source).through(target, concurrency=4).batch(5)
    assert pulled == [], "nothing may run before the stream is iterated"
    batches = stream.to_list()
    target.join()
    assert batches == [
        [0, 2, 4, 6, 8],
        [10, 12, 14, 16, 18],
        [20, 22, 24, 26, 28],
        [30, 32, 34, 36, 38],
    ]
    assert target.peak <= 4
    assert target.peak >= 2


def test_stream_unordered_yields_everything_and_errors_on_request() -> None:
    target = Doubler(delay=0.005)
    items = [{"x": x} for x in (5, -1, 3, 0)]
    results = (
        Stream.from_iterable(items)
        .through(target, concurrency=4, ordered=False, return_exceptions=True)
        .to_list()
    )
    target.join()
    values = sorted(r for r in results if isinstance(r, int))
    errors = [r for r in results if isinstance(r, ValueError)]
    assert values == [0, 6, 10]
    assert [str(e) for e in errors] == ["negative -1"]
    with pytest.raises(ValueError, match="negative"):
        Stream.from_iterable(items).through(target, concurrency=2).to_list()
    target.join()


def test_stream_rejects_bad_parameters_and_items() -> None:
    with pytest.raises(ValueError, match="batch size"):
        Stream.from_iterable([1]).batch(0)
    with pytest.raises(ValueError, match="concurrency"):
        Stream.from_iterable([{}]).through(Doubler(), concurrency=0)
    with pytest.raises(TypeError, match="dicts of inputs"):
        Stream.from_iterable([42]).through(Doubler()).to_list()


def test_stream_through_a_served_program(start_app: StartApp) -> None:
    app = start_app()
    qa = app.serve("qa", Predict("question -> answer"))
    answers = (
        Stream.from_iterable({"question": f"q{i}"} for i in range(30))
        .through(qa, concurrency=8)
        .map(lambda p: p.answer)
        .to_list()
    )
    assert len(answers) == 30
    assert all(answers)


class Recorder(Callback):
    def __init__(self) -> None:
        self.seen: list[str] = []

    def on_module_start(self, event: ModuleStart) -> None:
        self.seen.append(f"module_start {event.module_path}")

    def on_module_end(self, event: Any) -> None:
        self.seen.append(f"module_end {event.module_path}")


def test_a_call_publishes_module_events_with_its_trace_id(start_app: StartApp) -> None:
    app = start_app()
    events: list[Any] = []
    app.subscribe("module.*", events.append)
    recorder = Recorder()
    app.events.subscribe_callback(recorder)
    qa = app.serve("qa", Predict("question -> answer"))
    qa.call_with({"question": "traced"}, trace_id="trace-123")
    assert app.events.flush(5.0)
    assert [type(e) for e in events] == [ModuleStart, ModuleEnd]
    assert {e.trace_id for e in events} == {"trace-123"}
    assert recorder.seen == ["module_start qa", "module_end qa"]


def test_lm_calls_publish_lm_events(start_app: StartApp, sim: SimLM) -> None:
    app = start_app()
    events: list[Any] = []
    app.subscribe("lm.*", events.append)
    qa = app.serve("qa", Predict("question -> answer"))
    qa.call_with({"question": "lm"}, trace_id="t-lm")
    assert app.events.flush(5.0)
    assert [type(e) for e in events] == [LMStart, LMEnd]
    end = events[1]
    assert end.trace_id == "t-lm"
    assert end.error_type is None
    assert end.prompt_tokens is not None
    assert end.prompt_tokens > 0
    assert end.latency_s > 0
