"""Event bus: topics and wildcards, per-publisher order, isolation of failing subscribers,
publishing to a dead bus, many publishing threads, supervision, structlog and callbacks."""

from __future__ import annotations

import dataclasses
import io
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

import supervisors
from dspy_actors.runtime._events import (
    BreakerTransition,
    Callback,
    DeadLetterEvent,
    Event,
    EventBus,
    LMEnd,
    LMStart,
    ModuleEnd,
    ModuleError,
    ModuleStart,
    RunProgress,
    RuntimeRestart,
    matches,
    structlog_subscriber,
)

FLUSH_TIMEOUT = 30.0


@pytest.fixture
def bus() -> Iterator[EventBus]:
    b = EventBus.start()
    yield b
    assert b.stop(timeout=10.0)


def _lm_end(**overrides: Any) -> LMEnd:
    fields: dict[str, Any] = {
        "deployment": "local",
        "model": "sim/echo",
        "latency_s": 0.25,
        "prompt_tokens": 12,
        "completion_tokens": 3,
        "trace_id": "t-1",
    }
    return LMEnd(**(fields | overrides))


class Recorder:
    def __init__(self) -> None:
        self.events: list[Any] = []

    def __call__(self, event: Any) -> None:
        self.events.append(event)

    @property
    def topics(self) -> list[str]:
        return [e.topic for e in self.events]


# ------------------------------------------------------------------------------- events


def test_event_types_have_topics_and_are_frozen() -> None:
    samples: list[Event] = [
        ModuleStart(module_path="qa/cot"),
        ModuleEnd(module_path="qa/cot", latency_s=0.1),
        ModuleError(module_path="qa/cot", error_type="ValueError"),
        LMStart(deployment="d", model="m"),
        _lm_end(),
        RuntimeRestart(supervisor="root/modules", child_id="qa"),
        BreakerTransition(deployment="d", from_state="closed", to_state="open"),
        DeadLetterEvent(dead_letter_id="x", program="qa", module_path="qa"),
        RunProgress(run_id="r1", completed=3, total=10),
    ]
    assert [e.topic for e in samples] == [
        "module.start", "module.end", "module.error", "lm.start", "lm.end", "runtime.restart",
        "breaker.transition", "dead_letter", "run.progress",
    ]  # fmt: skip
    for event in samples:
        assert event.timestamp > 0
        with pytest.raises(dataclasses.FrozenInstanceError):
            event.trace_id = "changed"  # type: ignore[misc]
    assert samples[0].trace_id is None
    assert samples[4].trace_id == "t-1"
    assert not hasattr(samples[4], "__dict__")  # slots: cheap on the hot path
    assert _lm_end(error_type="RateLimited").log_level() == "warning"
    assert samples[6].log_level() == "warning"
    assert samples[0].log_level() == "info"


@pytest.mark.parametrize(
    ("pattern", "topic", "expected"),
    [
        ("*", "lm.end", True),
        ("*", "dead_letter", True),
        ("lm.*", "lm.end", True),
        ("lm.*", "lm.start", True),
        ("lm.*", "lmx.end", False),
        ("lm.*", "lm", False),
        ("lm.end", "lm.end", True),
        ("lm.end", "lm.start", False),
        ("module.*", "module.error", True),
    ],
)
def test_pattern_matching(pattern: str, topic: str, expected: bool) -> None:
    assert matches(pattern, topic) is expected


@pytest.mark.parametrize("pattern", ["", "lm*", "*.end", "lm.*.x", "l*m.end"])
def test_bad_patterns_are_refused(bus: EventBus, pattern: str) -> None:
    with pytest.raises(ValueError, match="pattern"):
        bus.subscribe(pattern, print)


def test_subscribers_get_the_topics_they_match(bus: EventBus) -> None:
    everything, lm, lm_end, modules, restarts = (Recorder() for _ in range(5))
    bus.subscribe("*", everything)
    bus.subscribe("lm.*", lm)
    bus.subscribe("lm.end", lm_end)
    bus.subscribe("module.*", modules)
    bus.subscribe("runtime.restart", restarts)
    published: list[Event] = [
        ModuleStart(module_path="m"),
        LMStart(deployment="d", model="m"),
        _lm_end(),
        ModuleEnd(module_path="m"),
        DeadLetterEvent(dead_letter_id="1", program="p", module_path="m"),
    ]
    for event in published:
        bus.publish(event)
    assert bus.flush(FLUSH_TIMEOUT)
    assert everything.events == published
    assert lm.topics == ["lm.start", "lm.end"]
    assert lm_end.topics == ["lm.end"]
    assert modules.topics == ["module.start", "module.end"]
    assert restarts.events == []
    assert bus.stats.delivered == 5 + 2 + 1 + 2
    assert bus.stats.dropped == 0


# ------------------------------------------------------------------------------ delivery


def _publish_sequences(bus: EventBus, n_threads: int, per_thread: int) -> None:
    start = threading.Barrier(n_threads, timeout=10)

    def publish(t: int) -> None:
        start.wait()
        for i in range(per_thread):
            bus.publish(RunProgress(run_id=str(t), completed=i))

    threads = [
        threading.Thread(target=publish, args=(t,), name=f"pub-{t}") for t in range(n_threads)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
        assert not t.is_alive()


def test_order_is_kept_per_publisher(bus: EventBus) -> None:
    got = Recorder()
    bus.subscribe("run.progress", got)
    _publish_sequences(bus, n_threads=4, per_thread=2_000)
    assert bus.flush(FLUSH_TIMEOUT)
    by_thread: dict[str, list[int]] = {}
    for event in got.events:
        by_thread.setdefault(event.run_id, []).append(event.completed)
    assert by_thread == {str(t): list(range(2_000)) for t in range(4)}


def test_sixteen_threads_publishing_ten_thousand_events_all_delivered(bus: EventBus) -> None:
    counts = [0] * 16

    def count(event: RunProgress) -> None:
        counts[int(event.run_id)] += 1

    bus.subscribe("run.*", count)
    _publish_sequences(bus, n_threads=16, per_thread=625)
    assert bus.flush(FLUSH_TIMEOUT)
    assert counts == [625] * 16
    assert bus.stats.published == bus.stats.delivered == 10_000
    assert bus.stats.dropped == 0


def test_unbounded_bus_delivers_ten_thousand_events_from_each_of_sixteen_threads() -> None:
    # With the default bound (100k pending) this burst could outrun delivery and drop.
    bus = EventBus.start(max_pending=None)
    counts = [0] * 16

    def count(event: RunProgress) -> None:
        counts[int(event.run_id)] += 1

    bus.subscribe("run.*", count)
    try:
        _publish_sequences(bus, n_threads=16, per_thread=10_000)
        assert bus.flush(FLUSH_TIMEOUT)
    finally:
        assert bus.stop(timeout=10.0)
    assert counts == [10_000] * 16
    assert bus.stats.published == bus.stats.delivered == 160_000
    assert bus.stats.dropped == 0


def test_failing_subscriber_is_logged_and_isolated(bus: EventBus) -> None:
    before, after = Recorder(), Recorder()

    def broken(event: Event) -> None:
        raise RuntimeError(f"subscriber bug on {event.topic}")

    bus.subscribe("*", before)
    bad = bus.subscribe("*", broken)
    bus.subscribe("*", after)
    with capture_logs() as logs:
        for i in range(5):
            bus.publish(RunProgress(run_id="r", completed=i))
        assert bus.flush(FLUSH_TIMEOUT)
    assert len(before.events) == len(after.events) == 5
    assert bad.failures == 5
    assert bus.stats.subscriber_failures == 5
    assert bus.is_alive
    failures = [e for e in logs if e["event"] == "event_bus.subscriber_failed"]
    assert len(failures) == 5
    assert failures[0]["log_level"] == "warning"
    assert "subscriber bug on run.progress" in failures[0]["error"]


def test_flush_from_inside_a_subscriber_is_refused_not_deadlocked(bus: EventBus) -> None:
    errors: list[BaseException] = []

    def flusher(event: Event) -> None:
        try:
            bus.flush(1.0)
        except RuntimeError as exc:
            errors.append(exc)

    bus.subscribe("*", flusher)
    bus.publish(RunProgress(run_id="r"))
    assert bus.flush(FLUSH_TIMEOUT)
    assert len(errors) == 1
    assert "wait for itself" in str(errors[0])


def test_unsubscribe_stops_deliveries(bus: EventBus) -> None:
    got = Recorder()
    sub = bus.subscribe("*", got)
    bus.publish(RunProgress(run_id="1"))
    assert bus.flush(FLUSH_TIMEOUT)
    assert bus.unsubscribe(sub) is True
    assert not sub.active
    assert bus.unsubscribe(sub) is False
    bus.publish(RunProgress(run_id="2"))
    assert bus.flush(FLUSH_TIMEOUT)
    assert [e.run_id for e in got.events] == ["1"]
    assert bus.subscriptions() == ()


def test_publish_after_the_bus_stopped_never_raises() -> None:
    bus = EventBus.start()
    got = Recorder()
    bus.subscribe("*", got)
    bus.publish(RunProgress(run_id="before"))
    assert bus.stop(timeout=10.0)
    assert [e.run_id for e in got.events] == ["before"]  # stop delivers what was queued
    for i in range(3):
        bus.publish(RunProgress(run_id=f"after-{i}"))
    assert bus.stats.dropped == 3
    assert bus.flush(0.1) is False
    assert not bus.is_alive


def test_publish_to_a_bus_that_never_started_is_counted_as_dropped() -> None:
    bus = EventBus()
    bus.publish(_lm_end())
    assert bus.stats.dropped == 1
    assert bus.stats.published == 0


def test_a_stuck_subscriber_makes_publish_drop_past_max_pending() -> None:
    bus = EventBus.start(max_pending=10)
    release = threading.Event()
    entered = threading.Event()
    got = Recorder()

    def stuck(event: Event) -> None:
        entered.set()
        release.wait(timeout=30)
        got(event)

    bus.subscribe("*", stuck)
    try:
        bus.publish(RunProgress(run_id="first"))
        assert entered.wait(timeout=10)
        for i in range(25):
            bus.publish(RunProgress(run_id=str(i)))
        assert bus.stats.dropped == 15  # 10 wait in the inbox; the rest are dropped
    finally:
        release.set()
        assert bus.flush(FLUSH_TIMEOUT)
        assert bus.stop(timeout=10.0)
    assert len(got.events) == 11


def test_supervised_bus_keeps_subscribers_across_a_restart() -> None:
    bus = EventBus(name="test-events-supervised")
    got = Recorder()
    bus.subscribe("lm.*", got)
    root = supervisors.Supervisor.start([bus.child_spec("events")], name="root")
    try:
        bus.publish(_lm_end(trace_id="before"))
        assert bus.flush(FLUSH_TIMEOUT)
        old = supervisors.registry.lookup(bus.name)
        supervisors.kill(old)
        assert supervisors.wait_for_exit(old, timeout=10) is not None
        for _ in range(500):  # the supervisor restarts it and re-registers the name
            new = supervisors.registry.whereis(bus.name)
            if new is not None and new is not old:
                break
            threading.Event().wait(0.01)
        assert bus.is_alive
        bus.publish(_lm_end(trace_id="after"))
        assert bus.flush(FLUSH_TIMEOUT)
    finally:
        root.stop(timeout=10.0)
    assert [e.trace_id for e in got.events] == ["before", "after"]


# ----------------------------------------------------------------------------- structlog


def test_structlog_json_lines_parse_back(bus: EventBus) -> None:
    stream = io.StringIO()
    config_before = structlog.get_config()
    bus.subscribe("*", structlog_subscriber("json", stream=stream))
    bus.publish(_lm_end(cache_hit=True))
    bus.publish(_lm_end(error_type="RateLimited", prompt_tokens=None, completion_tokens=None))
    bus.publish(ModuleStart(module_path="qa/cot", inputs={"question": "q", "obj": object()}))
    assert bus.flush(FLUSH_TIMEOUT)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 3
    ok, failed, start = lines
    assert ok["event"] == "lm.end"
    assert ok["level"] == "info"
    assert ok["logger"] == "dspy_actors.events"
    assert ok["trace_id"] == "t-1"
    assert ok["deployment"] == "local"
    assert ok["model"] == "sim/echo"
    assert ok["latency_s"] == 0.25
    assert ok["prompt_tokens"] == 12
    assert ok["completion_tokens"] == 3
    assert ok["cache_hit"] is True
    assert ok["error_type"] is None
    assert isinstance(ok["timestamp"], float)
    assert failed["level"] == "warning"
    assert failed["error_type"] == "RateLimited"
    assert start["event"] == "module.start"
    assert start["inputs"]["question"] == "q"
    assert start["inputs"]["obj"].startswith("<object object")  # repr, never a failure
    assert structlog.get_config() == config_before  # global configuration untouched


def test_structlog_console_renderer_writes_one_line_per_event(bus: EventBus) -> None:
    stream = io.StringIO()
    bus.subscribe("breaker.*", structlog_subscriber("console", stream=stream))
    bus.publish(BreakerTransition(deployment="east", from_state="closed", to_state="open"))
    assert bus.flush(FLUSH_TIMEOUT)
    (line,) = stream.getvalue().splitlines()
    assert "breaker.transition" in line
    assert "east" in line
    assert "warning" in line


def test_structlog_subscriber_rejects_unknown_renderers() -> None:
    with pytest.raises(ValueError, match="renderer"):
        structlog_subscriber("xml")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- callbacks


class RecordingCallback(Callback):
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def on_module_start(self, event: ModuleStart) -> None:
        self.calls.append(("module_start", event.module_path))

    def on_module_end(self, event: ModuleEnd | ModuleError) -> None:
        self.calls.append(("module_end", type(event).__name__))

    def on_lm_end(self, event: LMEnd) -> None:
        self.calls.append(("lm_end", event.model))


def test_callback_hooks_receive_module_and_lm_events(bus: EventBus) -> None:
    cb = RecordingCallback()
    bus.subscribe_callback(cb)
    bus.publish(ModuleStart(module_path="qa/cot"))
    bus.publish(LMStart(deployment="d", model="m"))  # on_lm_start not overridden: a no-op
    bus.publish(_lm_end())
    bus.publish(ModuleEnd(module_path="qa/cot"))
    bus.publish(ModuleError(module_path="qa/cot", error_type="ValueError"))
    bus.publish(RuntimeRestart(supervisor="root", child_id="qa"))  # no hook: ignored
    assert bus.flush(FLUSH_TIMEOUT)
    assert cb.calls == [
        ("module_start", "qa/cot"),
        ("lm_end", "sim/echo"),
        ("module_end", "ModuleEnd"),
        ("module_end", "ModuleError"),
    ]
    assert bus.stats.subscriber_failures == 0
