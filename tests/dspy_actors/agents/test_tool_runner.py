"""ToolRunner: timeouts, concurrency limits, quarantine; never an exception, never a hang."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from dspy_actors import Tool, ToolRunner, ToolTimeout
from dspy_actors.modules.tool_runner import ToolOutcome
from tests.dspy_actors.agents.conftest import WAIT


@pytest.fixture
def runner() -> Iterator[ToolRunner]:
    made = ToolRunner(default_timeout=5.0, quarantine_after=3)
    yield made
    assert made.join(WAIT)


def test_a_value_is_the_observation(runner: ToolRunner) -> None:
    def add(a: int, b: int) -> int:
        return a + b

    out = runner.run(Tool(add), {"a": 1, "b": "2"})
    assert out.ok
    assert out.observation == 3
    assert out.outcome == "ok"


def test_a_crash_is_an_observation_and_repeats_are_quarantined(runner: ToolRunner) -> None:
    letters: list[tuple[str, dict[str, Any], int]] = []
    runner.on_quarantine = lambda tool, args, err, n: (
        letters.append((tool.name, dict(args), n)) or "L1"
    )

    def divide(a: int, b: int) -> float:
        return a / b

    tool = Tool(divide)
    outs = [runner.run(tool, {"a": 1, "b": 0}) for _ in range(4)]
    assert [o.outcome for o in outs] == ["error", "error", "error", "quarantined"]
    assert outs[0].observation == "Execution error in divide: ZeroDivisionError: division by zero"
    assert outs[2].dead_letter_id == "L1"
    assert letters == [("divide", {"a": 1, "b": 0}, 3)]
    assert "quarantined" in outs[3].observation
    assert "L1" in outs[3].observation
    assert runner.run(tool, {"a": 4, "b": 2}).observation == 2.0  # other arguments still run
    assert runner.release("divide", {"a": 1, "b": 0})
    assert runner.run(tool, {"a": 1, "b": 0}).outcome == "error"


def test_bad_arguments_are_an_observation_not_a_crash(runner: ToolRunner) -> None:
    def square(x: int) -> int:
        return x * x

    outs = [runner.run(Tool(square), {"x": "not a number"}) for _ in range(5)]
    assert {o.outcome for o in outs} == {"bad_arguments"}
    assert "argument 'x' of tool 'square'" in outs[0].observation
    assert runner.quarantined() == {}


def test_a_hung_tool_is_abandoned_and_counted(runner: ToolRunner, gate: threading.Event) -> None:
    def stuck() -> str:
        gate.wait(WAIT)
        return "late"

    out = runner.run(Tool(stuck, timeout=0.05), {})
    assert out.outcome == "timeout"
    assert isinstance(out.error, ToolTimeout)
    assert "did not answer within 0.05s" in out.observation
    assert runner.stats()["stuck"] == {"timeout": 1, "running": 1}
    gate.set()
    assert runner.join(WAIT)
    assert runner.stats()["stuck"]["running"] == 0


def test_the_concurrency_limit_holds_under_many_callers(gate: threading.Event) -> None:
    runner = ToolRunner(default_timeout=WAIT)
    inside = 0
    most = 0
    lock = threading.Lock()
    entered = threading.Semaphore(0)

    def slow(i: int) -> int:
        nonlocal inside, most
        with lock:
            inside += 1
            most = max(most, inside)
        entered.release()
        gate.wait(WAIT)
        with lock:
            inside -= 1
        return i

    tool = Tool(slow, max_concurrency=3)
    with ThreadPoolExecutor(12) as pool:
        futures = [pool.submit(runner.run, tool, {"i": i}) for i in range(12)]
        for _ in range(3):
            assert entered.acquire(timeout=WAIT)
        assert runner.stats()["slow"]["running"] == 3
        gate.set()
        outs: list[ToolOutcome] = [f.result(timeout=WAIT) for f in futures]
    assert sorted(o.observation for o in outs) == list(range(12))
    assert most == 3
    assert runner.join(WAIT)


def test_no_slot_in_time_is_a_busy_observation(runner: ToolRunner, gate: threading.Event) -> None:
    def stuck() -> None:
        gate.wait(WAIT)

    tool = Tool(stuck, timeout=0.05, max_concurrency=1)
    assert runner.run(tool, {}).outcome == "timeout"  # still holds the only slot
    busy = runner.run(tool, {})
    assert busy.outcome == "busy"
    assert "concurrency limit" in busy.observation


def test_async_tools_run_supervised(runner: ToolRunner) -> None:
    import asyncio

    async def ping(host: str) -> str:
        await asyncio.sleep(0)
        return f"pong from {host}"

    assert runner.run(Tool(ping), {"host": "h"}).observation == "pong from h"


def test_hooks_see_every_call(runner: ToolRunner) -> None:
    seen: list[str] = []
    runner.on_start = lambda name, call_id, args: seen.append(f"start {name}")
    runner.on_end = lambda out: seen.append(f"end {out.tool} {out.outcome}")

    def one() -> int:
        return 1

    runner.run(Tool(one), {})
    assert seen == ["start one", "end one ok"]


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="quarantine_after"):
        ToolRunner(quarantine_after=0)
