"""A served program whose answers stream to HTTP clients over SSE (Starlette on uvicorn).

Run it:  .venv/bin/python examples/streaming_service.py

``GET /ask?question=...`` answers as a stream of server-sent events, as the LM writes:

    event: status   data: {"message": "Calling qa..."}
    event: chunk    data: {"predictor": "qa", "field": "answer", "text": "...", "last": false}
    event: done     data: {"answer": "..."}          (the Prediction's fields)
    event: error    data: {"error": "LMTimeout", "message": "..."}   (instead of done)

The endpoint reads ``handle.astream(...)``: a stream in flight holds no thread. Uvicorn
writes each event as it comes; a client that reads slowly makes the LM's HTTP read pause
(the stream's buffer is bounded), and a client that disconnects cancels its call, which
aborts the LM request and frees its slot. Watch for:

- one answer streamed word by word;
- 100 clients at once, 20 of which hang up after the first piece: the other 80 get
  their whole answer, and no LM request is left running.

The LM is SimLM, a simulated OpenAI-compatible server on loopback. For a real provider,
pass ``dsa.LM("openai/gpt-4o-mini")`` (key from OPENAI_API_KEY): see docs/providers.md.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

import dspy_actors as dsa
from dspy_actors.runtime.handle import ProgramHandle
from dspy_actors.streaming import StatusMessage, StreamResponse
from dspy_actors.testing import SimLM, SimRequest

STARTED_SECONDS = 30.0


def sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


async def answer_events(handle: ProgramHandle, question: str) -> AsyncIterator[bytes]:
    """The SSE events of one streamed call. If the client disconnects, Starlette cancels
    this generator's task, which cancels the call (its LM request is aborted)."""
    try:
        async for piece in handle.astream(question=question):
            if isinstance(piece, StatusMessage):
                yield sse("status", {"message": piece.message})
            elif isinstance(piece, StreamResponse):
                yield sse(
                    "chunk",
                    {
                        "predictor": piece.predict_name,
                        "field": piece.signature_field_name,
                        "text": piece.chunk,
                        "last": piece.is_last_chunk,
                    },
                )
            else:  # the Prediction, last
                yield sse("done", dict(piece.items()))
    except Exception as error:  # the call failed: say so in the stream, which then ends
        yield sse("error", {"error": type(error).__name__, "message": str(error)})


def make_app(handle: ProgramHandle) -> Starlette:
    """The ASGI app serving ``handle`` at ``GET /ask?question=...``."""

    async def ask(request: Request) -> StreamingResponse:
        question = request.query_params.get("question", "")
        return StreamingResponse(
            answer_events(handle, question),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache"},
        )

    return Starlette(routes=[Route("/ask", ask)])


class Serving:
    """uvicorn serving ``app`` on a free loopback port, in a thread, until the block ends."""

    def __init__(self, app: Starlette) -> None:
        config = uvicorn.Config(
            app, host="127.0.0.1", port=0, log_level="warning", backlog=4096, lifespan="off"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="uvicorn-streaming")

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + STARTED_SECONDS
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *_exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(STARTED_SECONDS)


async def read_stream(
    session: aiohttp.ClientSession, base: str, question: str, *, hang_up_after: int | None = None
) -> dict[str, Any]:
    """Read one answer's events: the text per field, and the final event. With
    ``hang_up_after=n``, disconnect after ``n`` chunks (a user closing the page)."""
    text: dict[str, str] = {}
    chunks = 0
    async with session.get(f"{base}/ask", params={"question": question}) as response:
        event = ""
        async for raw in response.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[len("event: ") :]
            elif line.startswith("data: "):
                data = json.loads(line[len("data: ") :])
                if event == "chunk":
                    text[data["field"]] = text.get(data["field"], "") + data["text"]
                    chunks += 1
                    if hang_up_after is not None and chunks >= hang_up_after:
                        response.close()  # drop the connection mid-stream
                        return {"hung_up": True, "chunks": chunks}
                elif event in ("done", "error"):
                    return {event: data, "text": text, "chunks": chunks}
    return {"incomplete": True, "text": text, "chunks": chunks}


def word_by_word(request: SimRequest) -> str:
    question = request.last_user_text.split("[[ ## question ## ]]")[-1].split("\n\n")[0]
    words = " ".join(f"word{i}" for i in range(40))
    return f"[[ ## answer ## ]]\nYou asked:{question.strip()[:40]} {words}\n\n[[ ## completed ## ]]"


def main() -> None:
    with (
        SimLM(word_by_word) as sim,
        tempfile.TemporaryDirectory(prefix="streaming-example-") as data_dir,
        dsa.start(
            lm=dsa.LM("openai/gpt-4o-mini", api_base=sim.openai_base, api_key="sim", cache=False),
            name="streaming-demo",
            data_dir=data_dir,
        ) as app,
    ):
        qa = app.serve("qa", dsa.Predict("question -> answer"))
        with Serving(make_app(qa)) as base:

            async def demo() -> None:
                async with aiohttp.ClientSession() as session:
                    one = await read_stream(session, base, "why is the sky blue?")
                    print(f"One answer in {one['chunks']} chunks: {one['done']['answer'][:60]}...")
                    results = await asyncio.gather(
                        *(
                            read_stream(
                                session,
                                base,
                                f"question {i}",
                                hang_up_after=3 if i % 5 == 0 else None,
                            )
                            for i in range(100)
                        )
                    )
                answered = [r for r in results if "done" in r]
                hung_up = [r for r in results if r.get("hung_up")]
                whole = all(r["done"]["answer"] == r["text"]["answer"] for r in answered)
                print(f"Streams answered in full: {len(answered)} (each text whole: {whole})")
                print(f"Clients that hung up mid-stream: {len(hung_up)}")

            asyncio.run(demo())
        print(f"Tokens spent: {qa.usage.total_tokens}")


if __name__ == "__main__":
    main()
