"""Experiment: does moving LM HTTP work into worker processes free the GIL? (It sized what
is now ``dsa.start(lm_processes=N)``, see ``dspy_actors/runtime/_lm_process.py``; kept to
compare the bare transport question.)

    .venv/bin/python bench/exp_process_offload.py [--threads 256] [--per-thread 6] [--procs 2]

Issue 4 wants 2x DSPy at 256 calls in flight; in our process the HTTP client's CPU and the
thread hand-offs share one GIL. This measures the other design: callers hand each request
body to one of ``--procs`` worker processes over a pipe (a reader thread per pipe completes
the callers' futures), and the workers' threads do the HTTP with urllib3. Against the same
server (100 ms latency, its own process), the same threads do the same POST in-process.
Printed: calls/s and this process's CPU per call for both. No runtime, no Predict: only the
transport question, to size the design before building it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import os
import struct
import sys
import tempfile
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import urllib3
from _common import timed_threads
from bench_core import Server

BODY = json.dumps(
    {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "What is 2 + 3?"}]}
).encode()
HEADERS = {"Authorization": "Bearer bench", "Content-Type": "application/json"}
_ID = struct.Struct("!Q")


def _post(pool: urllib3.HTTPConnectionPool, path: str, body: bytes) -> bytes:
    response = pool.urlopen("POST", path, body=body, headers=HEADERS, retries=False)
    return bytes(response.data)


def worker_main(conn: Connection, host: str, port: int, path: str, threads: int) -> None:
    """A worker process: requests in over ``conn``, HTTP in ``threads`` threads, answers out."""
    pool = urllib3.HTTPConnectionPool(host, port, maxsize=threads, block=False)
    send_lock = threading.Lock()

    def run(request_id: int, body: bytes) -> None:
        data = _post(pool, path, body)
        with send_lock:
            conn.send_bytes(_ID.pack(request_id) + data)

    with ThreadPoolExecutor(threads) as executor:
        while True:
            try:
                message = conn.recv_bytes()
            except EOFError:
                return
            if not message:
                return
            executor.submit(run, _ID.unpack_from(message)[0], message[_ID.size :])


class Offload:
    """The parent's side: round-robin over the worker pipes, one reader thread per pipe."""

    def __init__(self, url: str, procs: int, threads_per_proc: int) -> None:
        parsed = urllib3.util.parse_url(url)
        self._ids = itertools.count(1)
        self._pending: dict[int, Future[bytes]] = {}
        self._lock = threading.Lock()
        self._pipes: list[tuple[Connection, threading.Lock]] = []
        self._procs: list[multiprocessing.process.BaseProcess] = []
        self._readers: list[threading.Thread] = []
        self._next = itertools.count()
        context = multiprocessing.get_context("spawn")
        for i in range(procs):
            parent, child = context.Pipe()
            process = context.Process(
                target=worker_main,
                args=(child, parsed.host, parsed.port, parsed.path, threads_per_proc),
                daemon=True,
            )
            process.start()
            child.close()
            reader = threading.Thread(target=self._read, args=(parent,), name=f"offload-{i}")
            reader.start()
            self._pipes.append((parent, threading.Lock()))
            self._procs.append(process)
            self._readers.append(reader)

    def post(self, body: bytes) -> bytes:
        request_id = next(self._ids)
        future: Future[bytes] = Future()
        with self._lock:
            self._pending[request_id] = future
        conn, lock = self._pipes[next(self._next) % len(self._pipes)]
        with lock:
            conn.send_bytes(_ID.pack(request_id) + body)
        return future.result(timeout=60)

    def _read(self, conn: Connection) -> None:
        while True:
            try:
                message = conn.recv_bytes()
            except (EOFError, OSError):
                return
            request_id = _ID.unpack_from(message)[0]
            with self._lock:
                future = self._pending.pop(request_id)
            future.set_result(message[_ID.size :])

    def close(self) -> None:
        for conn, lock in self._pipes:
            with lock:
                conn.send_bytes(b"")
        for process in self._procs:
            process.join(timeout=10)
        for conn, _ in self._pipes:
            conn.close()
        for reader in self._readers:
            reader.join(timeout=10)


def load(post: Any, threads: int, per_thread: int) -> tuple[float, float]:
    def worker(_i: int) -> None:
        for _ in range(per_thread):
            json.loads(post(BODY))

    wall, cpu = timed_threads(worker, threads)
    n = threads * per_thread
    return n / wall, cpu / n * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--threads", type=int, default=256)
    parser.add_argument("--per-thread", type=int, default=6)
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    server = Server("sim-slow", 0.1, dict(os.environ), Path(tempfile.mkdtemp()))
    parsed = urllib3.util.parse_url(server.endpoint)
    assert parsed.host is not None  # a loopback URL
    local = urllib3.HTTPConnectionPool(parsed.host, parsed.port, maxsize=args.threads, block=False)
    offload = Offload(server.endpoint, args.procs, args.threads // args.procs + 1)
    try:
        for _ in range(args.rounds):
            rate, cpu = load(
                lambda body: _post(local, parsed.path or "/", body), args.threads, args.per_thread
            )
            print(
                f"in-process urllib3, {args.threads} threads: {rate:.0f} calls/s, "
                f"{cpu:.0f} us CPU/call"
            )
            rate, cpu = load(offload.post, args.threads, args.per_thread)
            print(
                f"offload to {args.procs} processes, {args.threads} threads: {rate:.0f} calls/s, "
                f"{cpu:.0f} us CPU/call in this process"
            )
    finally:
        offload.close()
        local.close()
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
