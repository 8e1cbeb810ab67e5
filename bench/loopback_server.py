"""A loopback OpenAI-compatible chat server for the LM benchmarks: one asyncio event loop
(aiohttp), so thousands of open connections cost sockets, not threads, and it is not the
bottleneck at the rates measured (run ``bench_async_clients.py --ceiling`` for its ceiling).

Every ``POST .../chat/completions`` sleeps ``latency`` seconds then answers one fixed
completion in ChatAdapter's format (``[[ ## answer ## ]]``), with usage.

    python bench/loopback_server.py --latency 2.0     # prints its base URL, serves until killed

From Python, :class:`LoopbackServer` runs it in a child process (so its CPU is not the
measured process's): ``with LoopbackServer(latency=2.0) as server: server.base_url``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
from typing import Any

_ANSWER = "[[ ## answer ## ]]\n42\n\n[[ ## completed ## ]]"


def _body() -> bytes:
    return json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "model": "bench",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": _ANSWER},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        }
    ).encode()


def raise_open_files_limit(wanted: int = 20_000) -> int:
    """Raise this process's soft RLIMIT_NOFILE towards ``wanted`` (capped by the hard
    limit); the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def _serve(host: str, port: int, latency: float) -> None:
    from aiohttp import web

    body = _body()

    async def complete(request: web.Request) -> web.Response:
        await request.read()
        if latency > 0:
            await asyncio.sleep(latency)
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", complete)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=16_384, reuse_address=True)
    await site.start()
    server = site._server
    sockets = getattr(server, "sockets", None) or ()
    bound = sockets[0].getsockname()[1] if sockets else port
    print(f"http://{host}:{bound}/v1", flush=True)
    await asyncio.Event().wait()


class LoopbackServer:
    """The server in a child process; ``base_url`` is its OpenAI base URL."""

    def __init__(self, latency: float, host: str = "127.0.0.1") -> None:
        self.latency = latency
        self.host = host
        self.base_url = ""
        self._process: subprocess.Popen[str] | None = None

    def __enter__(self) -> LoopbackServer:
        self._process = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--latency", str(self.latency)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._process.stdout is not None
        line = self._process.stdout.readline().strip()
        if not line.startswith("http://"):
            self.__exit__()
            raise RuntimeError(f"the loopback server did not start (said {line!r})")
        self.base_url = line
        return self

    def __exit__(self, *_exc: Any) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=10)
            self._process = None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Loopback OpenAI-compatible bench server.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=2.0)
    args = parser.parse_args(argv)
    raise_open_files_limit()
    try:
        asyncio.run(_serve(args.host, args.port, args.latency))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
