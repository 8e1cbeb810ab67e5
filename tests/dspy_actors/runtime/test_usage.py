"""Usage through the runtime: ``with metering(meter): handle.call(...)`` counts exactly the
LM calls that one call made, whichever threads (or worker processes) made them."""

from __future__ import annotations

from typing import Any

import pytest

import supervisors
from dspy_actors.lm._usage import UsageMeter, metering
from dspy_actors.modules._predict import Predict
from dspy_actors.testing.sim_lm import SimLM
from tests.dspy_actors.runtime.conftest import StartApp, run_in_threads
from tests.dspy_actors.runtime.programs import RAG


@pytest.mark.parametrize("lm_processes", [0, 1])
def test_each_callers_meter_counts_exactly_its_own_calls(
    start_app: StartApp, sim: SimLM, lm_processes: int
) -> None:
    app = start_app(lm_processes=lm_processes, lm_max_in_flight=8)
    qa = app.serve("qa", Predict("question -> answer"))
    meters = [UsageMeter() for _ in range(12)]

    def caller(i: int) -> None:
        with metering(meters[i]):
            for j in range(3):
                qa.call(question=f"caller {i} question {j}")

    run_in_threads(caller, 12)
    assert [m.total.calls for m in meters] == [3] * 12
    assert all(m.total.prompt_tokens > 0 for m in meters)
    lm = app.lm
    assert lm is not None
    assert sum(m.total.prompt_tokens for m in meters) == lm.usage.prompt_tokens
    assert sum(m.total.completion_tokens for m in meters) == lm.usage.completion_tokens


def test_a_pipeline_call_counts_every_steps_lm_calls(start_app: StartApp, sim: SimLM) -> None:
    app = start_app()
    p = app.program(
        "p",
        [
            ("draft", Predict, {"signature": "question -> draft"}),
            ("answer", Predict, {"signature": "question, draft -> answer"}),
        ],
    )
    meter = UsageMeter()
    with metering(meter):
        p.call(question="What is 2 + 3?")
    assert meter.total.calls == 2
    outside = UsageMeter()
    with metering(outside):
        pass
    p.call(question="not metered")
    assert meter.total.calls == 2, "a call made outside the block is not counted"


def test_a_composite_module_counts_the_calls_of_its_sub_module_actors(
    start_app: StartApp, sim: SimLM
) -> None:
    app = start_app()
    rag = app.serve("rag", RAG())
    meter = UsageMeter()
    with metering(meter):
        answer: Any = rag.call(question="What is 2 + 3?")
    assert answer.answer
    assert meter.total.calls == 1  # the ChainOfThought's one LM call, two actors down
    assert sim.request_count == 1


def test_cache_hits_cost_no_tokens_through_the_runtime(
    start_app: StartApp, make_lm: Any, sim: SimLM
) -> None:
    from dspy_actors.lm.cache import Cache

    app = start_app(lm=make_lm(cache=True, cache_store=Cache(disk_path=None)))
    qa = app.serve("qa", Predict("question -> answer"))
    qa.call(question="once")
    meter = UsageMeter()
    with metering(meter):
        qa.call(question="once")
    assert meter.total.calls == 0
    assert sim.request_count == 1


# Usage per served program and per module: handle.usage, handle.usage_by_module().


@pytest.mark.parametrize("lm_processes", [0, 1])
def test_a_served_composite_reports_its_usage_and_each_modules(
    start_app: StartApp, sim: SimLM, lm_processes: int
) -> None:
    app = start_app(lm_processes=lm_processes, lm_max_in_flight=8)
    rag = app.serve("rag", RAG())
    run_in_threads(lambda i: rag.call(question=f"question {i}"), 16)
    lm = app.lm
    assert lm is not None
    assert rag.usage.calls == 16
    assert rag.usage.prompt_tokens == lm.usage.prompt_tokens > 0
    assert rag.usage.completion_tokens == lm.usage.completion_tokens
    by_module = rag.usage_by_module()
    # The retriever makes no LM call: its meter exists (its actor started) but holds nothing.
    assert by_module["rag.retrieve"].calls == 0
    assert by_module["rag.answer"] == rag.usage == by_module["rag"]


def test_a_pipelines_usage_is_the_sum_of_its_steps(start_app: StartApp, sim: SimLM) -> None:
    app = start_app()
    p = app.program(
        "p",
        [
            ("draft", Predict, {"signature": "question -> draft"}),
            ("answer", Predict, {"signature": "question, draft -> answer"}),
        ],
    )
    for i in range(3):
        p.call(question=f"question {i}")
    by_module = p.usage_by_module()
    assert set(by_module) == {"p.draft", "p.answer"}
    assert by_module["p.draft"].calls == by_module["p.answer"].calls == 3
    assert p.usage == by_module["p.draft"] + by_module["p.answer"]
    assert p.usage.prompt_tokens == app.lm.usage.prompt_tokens  # type: ignore[union-attr]


def test_module_usage_adds_up_across_a_crash_and_an_upgrade(
    start_app: StartApp, sim: SimLM
) -> None:
    app = start_app()
    qa = app.serve("qa", Predict("question -> answer"))
    for i in range(3):
        qa.call(question=f"before {i}")
    before = qa.usage
    assert before.calls == 3

    name = f"{app.name}/qa@v1/"
    old = app.registry.whereis(name)
    assert old is not None
    supervisors.kill(old)  # a crash: the supervisor starts a fresh actor and module
    assert supervisors.wait_for_exit(old, timeout=10) is not None
    for i in range(3):
        qa.call(question=f"after a restart {i}")  # resent until the new actor is up
    assert app.registry.whereis(name) is not old
    assert qa.usage.calls == 6

    qa.upgrade(Predict("question -> answer"))
    qa.call(question="after the upgrade")
    assert qa.usage.calls == 7
    lm = app.lm
    assert lm is not None
    assert qa.usage.prompt_tokens == lm.usage.prompt_tokens
