"""A served program called from a Starlette app under uvicorn (real servers on loopback):
2,000 concurrent HTTP requests are all answered with the app's default limits."""

from __future__ import annotations

import asyncio
import inspect
import json
import threading
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from dspy_actors.modules._predict import Predict
from dspy_actors.runtime.app import start
from dspy_actors.runtime.handle import ProgramHandle
from dspy_actors.testing._polling import wait_until
from dspy_actors.testing.sim_lm import SimLM
from tests.dspy_actors.runtime.conftest import StartApp

REQUESTS = 2000


def _asgi_app(handle: ProgramHandle) -> Starlette:
    async def ask(request: Request) -> JSONResponse:
        body = await request.json()
        prediction = await handle.acall(question=body["question"])
        return JSONResponse({"answer": prediction.answer})

    return Starlette(routes=[Route("/ask", ask, methods=["POST"])])


class _Uvicorn:
    """uvicorn serving ``app`` on a free loopback port, in a thread, until stopped."""

    def __init__(self, app: Starlette) -> None:
        config = uvicorn.Config(
            app, host="127.0.0.1", port=0, log_level="warning", backlog=4096, lifespan="off"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="uvicorn-test")

    def __enter__(self) -> int:
        self.thread.start()
        wait_until(lambda: self.server.started, timeout=30.0, what="uvicorn started")
        sockets = [s for server in self.server.servers for s in server.sockets]
        return int(sockets[0].getsockname()[1])

    def __exit__(self, *_exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30.0)


async def _post(port: int, question: str) -> tuple[int, Any]:
    """One HTTP/1.1 request on its own connection (a raw client: no pool to limit it)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        body = json.dumps({"question": question}).encode()
        writer.write(
            b"POST /ask HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        raw = await reader.read()
    finally:
        writer.close()
    head, _, payload = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(payload) if status == 200 else payload


@pytest.mark.timeout(300)
def test_two_thousand_concurrent_requests_are_all_answered_with_defaults(
    start_app: StartApp, sim: SimLM
) -> None:
    sim.latency = 0.3  # so that the requests really are in flight together
    defaults = inspect.signature(start).parameters
    # The test fixture narrows the LM pool (8 in flight); here the newcomer's defaults
    # hold. (Left at 8, the 2,000 requests queued for the LM 8 at a time: 75 s of waits.)
    app = start_app(
        lm_workers=defaults["lm_workers"].default,
        lm_max_in_flight=defaults["lm_max_in_flight"].default,
    )
    handle = app.serve("qa", Predict("question -> answer"))
    with _Uvicorn(_asgi_app(handle)) as port:
        peak = 0

        async def main() -> list[Any]:
            nonlocal peak
            calls = asyncio.gather(
                *(_post(port, f"question {i}") for i in range(REQUESTS)), return_exceptions=True
            )
            while not calls.done():
                peak = max(peak, handle._program.gate.total)
                await asyncio.wait({calls}, timeout=0.01)
            return await asyncio.wait_for(calls, timeout=240.0)

        results = asyncio.run(main())
    failures = [r for r in results if isinstance(r, BaseException) or r[0] != 200]
    assert not failures, (len(failures), failures[:3])
    assert all(r[1]["answer"] for r in results)
    assert peak >= REQUESTS // 2, f"only {peak} calls were ever in flight together"
