"""The event bus's batched delivery: what metrics, console and tracing subscribe with."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from dspy_actors.runtime._events import Event, EventBus, ModuleEnd, ModuleStart, RunProgress
from dspy_actors.testing import wait_until

FLUSH_TIMEOUT = 30.0


@pytest.fixture
def bus() -> Iterator[EventBus]:
    bus = EventBus.start()
    yield bus
    assert bus.stop(timeout=10.0)


def test_a_batch_subscriber_gets_every_matching_event_in_order_in_lists(bus: EventBus) -> None:
    batches: list[list[Event]] = []
    bus.subscribe("module.*", batches.append, batch=True)
    one_by_one: list[Event] = []
    bus.subscribe("*", one_by_one.append)
    published: list[Event] = []

    def publish(t: int) -> None:
        for i in range(500):
            event = ModuleStart(module_path=f"p{t}", call_id=str(i))
            published.append(event)
            bus.publish(event)
            bus.publish(RunProgress(run_id=str(t), completed=i))

    threads = [threading.Thread(target=publish, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert bus.flush(FLUSH_TIMEOUT)
    assert all(batches)
    assert all(isinstance(b, list) for b in batches)
    got = [e for batch in batches for e in batch]
    assert sorted(map(id, got)) == sorted(map(id, published))  # each once, no other topic
    for t in range(4):  # publish order per publishing thread
        mine = [int(e.call_id) for e in got if getattr(e, "module_path", "") == f"p{t}"]
        assert mine == list(range(500))
    assert len(one_by_one) == 4000
    assert bus.stats.delivered == 4000 + 2000


def test_an_event_nobody_subscribes_to_is_not_queued(bus: EventBus) -> None:
    ends: list[Event] = []
    bus.subscribe("module.end", ends.append)
    bus.publish(ModuleStart(module_path="qa"))  # no subscriber for module.start
    bus.publish(ModuleEnd(module_path="qa"))
    assert bus.flush(FLUSH_TIMEOUT)
    assert [e.topic for e in ends] == ["module.end"]
    assert bus.stats.published == 1
    assert bus.stats.dropped == 0


def test_a_failing_batch_subscriber_is_isolated(bus: EventBus) -> None:
    def broken(events: list[Event]) -> None:
        raise RuntimeError("batch subscriber bug")

    bad = bus.subscribe("run.*", broken, batch=True)
    got: list[Event] = []
    bus.subscribe("run.*", got.append)
    for i in range(3):
        bus.publish(RunProgress(run_id="r", completed=i))
    assert bus.flush(FLUSH_TIMEOUT)
    assert [e.completed for e in got if isinstance(e, RunProgress)] == [0, 1, 2]
    assert bad.failures >= 1
    assert bus.is_alive


def test_a_bus_woken_soon_after_a_drain_lingers_so_later_events_join_the_next() -> None:
    # A linger far longer than the test: nothing is delivered until a flush asks.
    bus = EventBus.start(linger_s=600.0)
    try:
        batches: list[list[Event]] = []
        bus.subscribe("module.*", batches.append, batch=True)
        bus.publish(ModuleStart(module_path="first"))  # alone: delivered without a linger
        wait_until(lambda: bus.stats.delivered == 1, timeout=30.0, what="the first event")
        assert batches == [[batches[0][0]]]
        batches.clear()

        def publish(t: int) -> None:
            for i in range(100):
                bus.publish(ModuleStart(module_path=f"p{t}", call_id=str(i)))

        threads = [threading.Thread(target=publish, args=(t,)) for t in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        # The first of them woke the bus within 600 s of its last drain: it lingers.
        assert bus.stats.delivered == 1
        assert bus.flush(FLUSH_TIMEOUT)  # (returns at once, not after 600 s)
        assert len(batches) == 1  # one wake-up, one drain, for 300 events
        (batch,) = batches
        for t in range(3):
            mine = [int(e.call_id) for e in batch if getattr(e, "module_path", "") == f"p{t}"]
            assert mine == list(range(100))
        bus.publish(ModuleStart(module_path="after the flush"))
    finally:
        assert bus.stop(timeout=10.0)  # stop delivers what is queued without lingering
    assert bus.stats.delivered == 302


def test_a_negative_linger_is_refused() -> None:
    with pytest.raises(ValueError, match="linger_s"):
        EventBus(linger_s=-1.0)


def test_sampled_calls_events_wake_nobody_and_a_timer_delivers_them_in_batches() -> None:
    bus = EventBus.start(linger_s=0.0)
    try:
        batches: list[list[Event]] = []
        bus.subscribe("module.*", batches.append, batch=True, sampled_calls=True)
        bus.call_sampler = lambda trace_id: trace_id is not None and trace_id.startswith("s")
        assert bus.call_publisher("module", "not picked") is None
        publish = bus.call_publisher("module", "s-1")
        assert publish is not None
        for i in range(200):
            publish(ModuleStart(trace_id="s-1", module_path="qa", call_id=str(i)))
        # No flush: the timer's tick wakes the bus for them, in few drains.
        wait_until(lambda: bus.stats.delivered == 200, timeout=30.0, what="200 delivered")
        assert [int(e.call_id) for b in batches for e in b] == list(range(200))
        assert len(batches) < 200
        # Nothing more comes: the ticks stop (no timer left pending for this bus).
        wait_until(lambda: not bus._ticking, timeout=30.0, what="the ticks to stop")
    finally:
        assert bus.stop(timeout=10.0)
