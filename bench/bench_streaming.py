"""Streaming through the runtime: time to first chunk, cancellation, 1,000 streams.

SimLM (a real HTTP server, streaming SSE word by word) runs in a child process, so its
threads and CPU are not this process's. Measured, in one run against the same server:

- time to first chunk: ``handle.astream`` (first ``StreamResponse``) vs a raw aiohttp SSE
  client posting the same kind of request (first content delta), interleaved;
- cancellation: a reader closes its stream after the first piece of a long answer; time
  until its LM slot is free again (the LM request aborted);
- 1,000 concurrent streams read to the end on one event loop: wall time, streams/s,
  pieces/s, peak threads, RSS, streams lost;
- 1,000 concurrent streams of a long answer whose readers stop after one piece: RSS once
  every buffer is full and again a while later (no growth: the HTTP reads paused), then
  how long until every slot is free after they all close.

    .venv/bin/python bench/bench_streaming.py                     # all of it
    .venv/bin/python bench/bench_streaming.py --streams 200 --samples 20   # quicker
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine_info, machine_load, rss_kib, summarize_ms, write_results
from loopback_server import raise_open_files_limit

import dspy_actors as dsa
import supervisors
from dspy_actors.runtime._lm_pool import PoolStats
from dspy_actors.runtime.app import App
from dspy_actors.streaming import StreamResponse

SHORT_WORDS = 60  # an ordinary answer: ~60 deltas
LONG_WORDS = 5_000  # ~750 KB of SSE: more than a stalled reader's buffers hold


def _serve_sim() -> None:
    """The child process: SimLM answering ``long`` prompts with LONG_WORDS words."""
    from dspy_actors.testing import SimLM, SimRequest

    short = " ".join(f"w{i}" for i in range(SHORT_WORDS))
    long = " ".join(f"w{i}" for i in range(LONG_WORDS))

    def respond(request: SimRequest) -> str:
        words = long if "long" in request.last_user_text else short
        return f"[[ ## answer ## ]]\n{words}\n\n[[ ## completed ## ]]"

    with SimLM(respond, record_requests=False) as sim:
        print(sim.openai_base, flush=True)
        sys.stdin.read()  # until the parent closes our stdin


class SimChild:
    def __enter__(self) -> str:
        self.process = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--serve-sim"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        return self.process.stdout.readline().strip()

    def __exit__(self, *_exc: object) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def busy(app: App) -> int:
    router = app.registry.lookup(app.router_name)
    return int(supervisors.ask(router, PoolStats(), timeout=10.0)["busy"])


async def wait_idle(app: App, timeout: float = 60.0) -> float:
    """Seconds until no LM request is in flight (polled every half millisecond)."""
    start = time.perf_counter()
    while busy(app) and time.perf_counter() - start < timeout:
        await asyncio.sleep(0.0005)
    return time.perf_counter() - start


async def raw_first_chunk(session: Any, base: str, question: str) -> float:
    body = {
        "model": "sim",
        "stream": True,
        "messages": [{"role": "user", "content": f"[[ ## question ## ]]\n{question}"}],
    }
    start = time.perf_counter()
    async with session.post(
        f"{base}/chat/completions", json=body, headers={"authorization": "Bearer sim"}
    ) as response:
        async for raw in response.content:
            line = raw.decode().strip()
            if line.startswith("data: {"):
                delta = json.loads(line[6:])["choices"]
                if delta and delta[0]["delta"].get("content"):
                    elapsed = time.perf_counter() - start
                    response.close()
                    return elapsed
    raise RuntimeError("the raw stream had no content")


async def runtime_first_chunk(qa: Any, question: str) -> float:
    start = time.perf_counter()
    async with qa.astream(question=question) as stream:
        async for piece in stream:
            if isinstance(piece, StreamResponse):
                return time.perf_counter() - start
    raise RuntimeError("the runtime stream had no piece")


async def time_to_first_chunk(qa: Any, base: str, samples: int) -> dict[str, Any]:
    import aiohttp

    raw: list[float] = []
    runtime: list[float] = []
    async with aiohttp.ClientSession() as session:
        for i in range(samples + 3):  # 3 warm-up rounds, not counted
            r = await raw_first_chunk(session, base, f"raw {i}")
            t = await runtime_first_chunk(qa, f"runtime {i}")
            if i >= 3:
                raw.append(r)
                runtime.append(t)
    raw_ms, runtime_ms = summarize_ms(raw), summarize_ms(runtime)
    return {
        "raw_sse_client": raw_ms,
        "runtime_astream": runtime_ms,
        "p50_ratio_runtime_over_raw": runtime_ms["p50_ms"] / raw_ms["p50_ms"],
        "p50_overhead_ms": runtime_ms["p50_ms"] - raw_ms["p50_ms"],
    }


async def cancellation(app: App, qa: Any, samples: int) -> dict[str, Any]:
    freed: list[float] = []
    for i in range(samples):
        stream = qa.astream_with({"question": f"long {i}"}, buffer=8)
        async for piece in stream:
            if isinstance(piece, StreamResponse):
                break
        closed = time.perf_counter()
        await stream.aclose()
        await wait_idle(app)
        freed.append(time.perf_counter() - closed)
    return {"close_to_slot_free": summarize_ms(freed)}


async def many_streams(app: App, qa: Any, streams: int) -> dict[str, Any]:
    threads_peak = threading.active_count()
    rss_peak = rss_before = rss_kib()
    pieces = 0
    answered = failed = 0

    async def one(i: int) -> None:
        nonlocal pieces, answered, failed
        try:
            async for piece in qa.astream(question=f"q {i}"):
                if isinstance(piece, StreamResponse):
                    pieces += 1
                elif isinstance(piece, dsa.Prediction):
                    answered += 1
        except Exception:
            failed += 1

    start = time.perf_counter()
    work = asyncio.gather(*(one(i) for i in range(streams)))
    while not work.done():
        threads_peak = max(threads_peak, threading.active_count())
        rss_peak = max(rss_peak, rss_kib())
        await asyncio.wait({work}, timeout=0.05)
    wall = time.perf_counter() - start
    return {
        "streams": streams,
        "wall_s": wall,
        "streams_per_s": streams / wall,
        "pieces_per_s": pieces / wall,
        "answered": answered,
        "failed": failed,
        "lost": streams - answered - failed,
        "threads_peak": threads_peak,
        "rss_before_mib": rss_before / 1024,
        "rss_peak_mib": rss_peak / 1024,
    }


async def stalled_streams(app: App, qa: Any, streams: int, buffer: int) -> dict[str, Any]:
    rss_before = rss_kib()
    opened = [
        qa.astream_with({"question": f"long {i}"}, buffer=buffer, timeout=600.0)
        for i in range(streams)
    ]

    failed = 0

    async def first(stream: Any) -> None:
        nonlocal failed
        try:
            async for piece in stream:
                if isinstance(piece, StreamResponse):
                    return
        except Exception:  # (a server too slow to accept on a loaded machine, say)
            failed += 1

    await asyncio.gather(*(first(s) for s in opened))
    deadline = time.monotonic() + 120
    while (
        sum(s.buffered for s in opened) < (streams - failed) * buffer
        and time.monotonic() < deadline
    ):
        await asyncio.sleep(0.05)
    full = sum(s.buffered for s in opened)
    rss_full = rss_kib()
    # The readers stay stopped. What the HTTP client has read past the stream's buffer
    # (aiohttp's own read buffer, until it pauses the socket) fills up, then nothing grows.
    await asyncio.sleep(3.0)
    rss_later = rss_kib()
    await asyncio.sleep(3.0)
    rss_latest = rss_kib()
    still = busy(app)
    closed = time.perf_counter()
    await asyncio.gather(*(s.aclose() for s in opened))
    idle_after = await wait_idle(app)
    return {
        "streams": streams,
        "buffer": buffer,
        "failed_before_first_piece": failed,
        "pieces_buffered_when_full": full,
        "lm_requests_in_flight_while_stalled": still,
        "rss_before_mib": rss_before / 1024,
        "rss_all_buffers_full_mib": rss_full / 1024,
        "rss_3s_later_mib": rss_later / 1024,
        "rss_6s_later_mib": rss_latest / 1024,
        "close_all_to_slots_free_s": idle_after,
        "close_all_wall_s": time.perf_counter() - closed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--serve-sim", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--stalled", type=int, default=1000, help="stalled readers")
    parser.add_argument("--buffer", type=int, default=16)
    parser.add_argument("--no-write", action="store_true", help="do not write bench/results")
    args = parser.parse_args()
    if args.serve_sim:
        _serve_sim()
        return
    raise_open_files_limit()
    supervisors.set_log_level("error")
    results: dict[str, Any] = {"machine": machine_info(), "load_at_start": machine_load()}
    with SimChild() as base, tempfile.TemporaryDirectory(prefix="bench-streaming-") as data:
        lm = dsa.LM("openai/sim", api_base=base, api_key="sim", cache=False)
        with dsa.start(lm=lm, data_dir=data, lm_max_in_flight=max(1024, args.streams)) as app:
            qa = app.serve("qa", dsa.Predict("question -> answer"))

            async def run() -> None:
                results["time_to_first_chunk"] = await time_to_first_chunk(qa, base, args.samples)
                print("time to first chunk:", json.dumps(results["time_to_first_chunk"]))
                results["cancellation"] = await cancellation(app, qa, args.samples)
                print("cancellation:", json.dumps(results["cancellation"]))
                results["concurrent"] = await many_streams(app, qa, args.streams)
                print("concurrent:", json.dumps(results["concurrent"]))
                results["stalled"] = await stalled_streams(app, qa, args.stalled, args.buffer)
                print("stalled readers:", json.dumps(results["stalled"]))

            asyncio.run(run())
    results["load_at_end"] = machine_load()
    if not args.no_write:
        print("written to", write_results("streaming", results))


if __name__ == "__main__":
    main()
