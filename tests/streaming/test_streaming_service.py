"""examples/streaming_service.py under load: 500 concurrent SSE streams read by a real
HTTP client (aiohttp), 100 of whose clients disconnect mid-stream."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
import pytest

import dspy_actors as dsa
from dspy_actors.testing._polling import wait_until
from dspy_actors.testing.sim_lm import SimLM
from tests.streaming.conftest import StartApp
from tests.streaming.test_stream_flow import busy

STREAMS = 500
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "streaming_service.py"


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("streaming_service_example", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(240)
def test_five_hundred_concurrent_streams_with_clients_hanging_up(
    sim: SimLM, start_app: StartApp
) -> None:
    example = load_example()
    sim.respond_with(example.word_by_word)
    app = start_app(lm_max_in_flight=STREAMS)
    qa = app.serve("qa", dsa.Predict("question -> answer"))
    with example.Serving(example.make_app(qa)) as base:

        async def main() -> list[Any]:
            connector = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(connector=connector) as session:
                return await asyncio.wait_for(
                    asyncio.gather(
                        *(
                            example.read_stream(
                                session,
                                base,
                                f"question {i}",
                                hang_up_after=2 if i % 5 == 0 else None,
                            )
                            for i in range(STREAMS)
                        ),
                        return_exceptions=True,
                    ),
                    timeout=200,
                )

        results = asyncio.run(main())
    failures = [r for r in results if isinstance(r, BaseException)]
    assert not failures, failures[:3]
    answered = [r for r in results if "done" in r]
    hung_up = [r for r in results if r.get("hung_up")]
    assert len(hung_up) == STREAMS // 5
    assert len(answered) == STREAMS - STREAMS // 5  # none lost, no error events
    for r in answered:
        assert r["text"]["answer"] == r["done"]["answer"]
        assert r["chunks"] > 10
    # Every disconnected client's call was cancelled: no LM request is left running.
    wait_until(lambda: busy(app) == 0, timeout=20.0)


@pytest.mark.timeout(120)
def test_a_client_hanging_up_aborts_its_lm_request(sim: SimLM, start_app: StartApp) -> None:
    example = load_example()
    # Far more SSE than every socket buffer on the way holds (~40 MB from SimLM): the LM
    # requests can only end early, by being aborted.
    endless = "[[ ## answer ## ]]\n" + " ".join(f"w{i}" for i in range(300_000))
    sim.respond_with(lambda req: endless)
    app = start_app()
    qa = app.serve("qa", dsa.Predict("question -> answer"))
    with example.Serving(example.make_app(qa)) as base:

        async def main() -> list[Any]:
            async with aiohttp.ClientSession() as session:
                return await asyncio.gather(
                    *(
                        example.read_stream(session, base, f"q{i}", hang_up_after=2)
                        for i in range(5)
                    )
                )

        results = asyncio.run(main())
        assert all(r.get("hung_up") for r in results)
        wait_until(lambda: busy(app) == 0, timeout=20.0)
    assert qa.usage.total_tokens == 0  # no LM request ran to its end (none was settled)
