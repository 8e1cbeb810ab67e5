"""aiohttp vs httpx's AsyncClient: many chat POSTs in flight on one asyncio loop.

What the LM's event loops should post with. Each client keeps ``in_flight`` requests
outstanding against the loopback server (``bench/loopback_server.py``, a child process)
for ``rounds`` rounds' worth of calls, with no client-side connection cap, and reports
calls/s, failures and this process's CPU. ``--ceiling`` also measures the server with no
latency (aiohttp at 256 in flight), so no number is read as the client's when it is the
server's.

    .venv/bin/python bench/bench_async_clients.py --latency 2 --in-flight 256 4096
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loopback_server import LoopbackServer, raise_open_files_limit

_BODY = json.dumps(
    {"model": "bench", "messages": [{"role": "user", "content": "What is 6 x 7?"}]}
).encode()
_HEADERS = {"content-type": "application/json", "authorization": "Bearer bench"}


async def _drive(post: Any, in_flight: int, calls: int, timeout: float) -> tuple[int, int]:
    """``calls`` posts, ``in_flight`` at a time; (succeeded, failed)."""
    remaining = iter(range(calls))
    ok = failed = 0

    async def lane() -> None:
        nonlocal ok, failed
        for _ in remaining:
            try:
                await asyncio.wait_for(post(), timeout)
                ok += 1
            except Exception:
                failed += 1

    await asyncio.gather(*(lane() for _ in range(in_flight)))
    return ok, failed


async def _aiohttp(url: str, in_flight: int, calls: int, timeout: float) -> tuple[int, int]:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def post() -> None:
            async with session.post(url, data=_BODY, headers=_HEADERS) as response:
                await response.read()
                response.raise_for_status()

        return await _drive(post, in_flight, calls, timeout)


async def _httpx(url: str, in_flight: int, calls: int, timeout: float) -> tuple[int, int]:
    import httpx

    limits = httpx.Limits(max_connections=None, max_keepalive_connections=in_flight)
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:

        async def post() -> None:
            response = await client.post(url, content=_BODY, headers=_HEADERS)
            response.raise_for_status()

        return await _drive(post, in_flight, calls, timeout)


CLIENTS = {"aiohttp": _aiohttp, "httpx": _httpx}


def measure(client: str, url: str, in_flight: int, calls: int, timeout: float) -> dict[str, Any]:
    cpu0, t0 = time.process_time(), time.perf_counter()
    try:
        ok, failed = asyncio.run(
            asyncio.wait_for(CLIENTS[client](url, in_flight, calls, timeout), timeout * 4)
        )
        note = ""
    except TimeoutError:
        ok, failed, note = 0, calls, "did not finish"
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return {
        "client": client,
        "in_flight": in_flight,
        "calls": calls,
        "ok": ok,
        "failed": failed,
        "wall_s": round(wall, 2),
        "calls_per_s": round(ok / wall, 1),
        "cpu_us_per_call": round(cpu / max(ok, 1) * 1e6),
        "note": note,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="aiohttp vs httpx AsyncClient, in flight.")
    parser.add_argument("--latency", type=float, default=2.0)
    parser.add_argument("--in-flight", type=int, nargs="+", default=[256, 4096])
    parser.add_argument("--rounds", type=int, default=3, help="calls = rounds x in flight")
    parser.add_argument("--clients", nargs="+", default=list(CLIENTS))
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--ceiling", action="store_true")
    args = parser.parse_args(argv)
    raise_open_files_limit()
    rows: list[dict[str, Any]] = []
    if args.ceiling:
        with LoopbackServer(latency=0.0) as server:
            row = measure("aiohttp", f"{server.base_url}/chat/completions", 256, 20_000, 60.0)
            row["note"] = "server ceiling (latency 0)"
            rows.append(row)
            print(json.dumps(row), flush=True)
    with LoopbackServer(latency=args.latency) as server:
        url = f"{server.base_url}/chat/completions"
        for in_flight in args.in_flight:
            for client in args.clients:
                row = measure(client, url, in_flight, in_flight * args.rounds, args.timeout)
                row["latency_s"] = args.latency
                row["ideal_per_s"] = round(in_flight / args.latency, 1)
                rows.append(row)
                print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
