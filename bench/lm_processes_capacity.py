"""Can ``lm_processes`` hold the default ``lm_max_in_flight`` (4,096) in flight? The event
loops (``lm_processes=0``) and N worker processes, alternately, against one loopback server:
N concurrent ``await handle.acall(...)`` with the defaults otherwise. In a worker process a
call in flight holds a thread (blocking HTTP), started as calls arrive; printed: calls/s,
failures, the worker processes' peak threads and RSS, this process's threads.

    .venv/bin/python bench/lm_processes_capacity.py --in-flight 4096 --processes 2 --rounds 2

Run it under the shared lock (``flock -w 900 /tmp/bench.lock ...``) on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import dspy_actors as dsa

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loopback_server import LoopbackServer, raise_open_files_limit


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1])
    return 0


class _Peaks:
    """Samples the worker processes' threads and RSS every 0.2 s, keeping the peaks."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.threads = 0
        self.rss_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="peaks", daemon=True)

    def _watch(self) -> None:
        while not self._stop.wait(0.2):
            try:
                threads = sum(len(os.listdir(f"/proc/{pid}/task")) for pid in self.pids)
                rss = sum(_rss_kb(pid) for pid in self.pids)
            except FileNotFoundError:
                continue  # a process being replaced
            self.threads = max(self.threads, threads)
            self.rss_kb = max(self.rss_kb, rss)

    def __enter__(self) -> _Peaks:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)


def run_case(base_url: str, in_flight: int, processes: int) -> str:
    lm = dsa.LM("openai/bench", api_base=base_url, api_key="k", cache=False, timeout=120)
    try:
        with dsa.start(
            lm=lm, data_dir=tempfile.mkdtemp(), lm_processes=processes, call_timeout=300
        ) as app:
            qa = app.serve("qa", dsa.Predict("question -> answer"))
            hosts = app.root.supervisor("lm").supervisor("workers").which_children()
            described = [h.ref.proxy().describe().get(timeout=10) for h in hosts if h.ref]
            pids = [d["pid"] for d in described if "pid" in d]

            async def calls() -> tuple[list[Any], float]:
                began = time.monotonic()
                answers = await asyncio.gather(
                    *(qa.acall(question=f"q{i}") for i in range(in_flight)),
                    return_exceptions=True,
                )
                return answers, time.monotonic() - began

            with _Peaks(pids) as peaks:
                answers, elapsed = asyncio.run(calls())
            failed = [a for a in answers if isinstance(a, BaseException)]
            kinds = sorted({type(a).__name__ for a in failed})
            return (
                f"lm_processes={processes}: {in_flight / elapsed:.0f} calls/s, {len(failed)} "
                f"failed {kinds}, worker processes' peak threads {peaks.threads}, "
                f"RSS {peaks.rss_kb // 1024} MB; this process {threading.active_count()} threads"
            )
    finally:
        lm.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--in-flight", type=int, default=4096)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--latency", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    raise_open_files_limit()
    with LoopbackServer(latency=args.latency) as server:
        print(f"{args.in_flight} in flight, {args.latency:g} s latency, load {os.getloadavg()}")
        for _ in range(args.rounds):
            for processes in (0, args.processes):
                print(run_case(server.base_url, args.in_flight, processes), flush=True)


if __name__ == "__main__":
    main()
