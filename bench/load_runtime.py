"""One load run, for profiling: K threads x N uncached calls at 100 ms server latency,
through a one-step ``app.program`` or a plain ``Predict`` (no runtime).

    .venv/bin/python bench/load_runtime.py 256 8 program
    .venv/bin/python bench/load_runtime.py 256 8 predict
    .venv/bin/python bench/load_runtime.py 256 8 program 2     # LM HTTP in 2 worker processes
    py-spy record --gil -o prof.txt -f raw -- .venv/bin/python bench/load_runtime.py 64 40 program

Prints calls/s and the process's CPU per call (the server runs in its own process, so its
CPU is not counted). bench_runtime.py is the benchmark; this is the loop to put under a
profiler or to compare two builds quickly.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import timed_threads
from bench_core import Server

import dspy_actors as dsa


def main(argv: list[str]) -> int:
    threads, per_thread = int(argv[0]), int(argv[1])
    mode = argv[2] if len(argv) > 2 else "program"
    processes = int(argv[3]) if len(argv) > 3 else 0
    server = Server("sim-slow", 0.1, dict(os.environ), Path(tempfile.mkdtemp()))
    lm = dsa.LM("openai/gpt-4o-mini", api_base=server.url + "/v1", api_key="k", cache=False)
    app = dsa.start(
        lm=lm, data_dir=tempfile.mkdtemp(), lm_max_in_flight=threads, lm_processes=processes
    )
    try:
        call: Callable[[str], Any]
        if mode == "program":
            handle = app.program(
                "p", [("answer", dsa.Predict, {"signature": "question -> answer"})]
            )
            call = lambda q: handle.call(question=q).answer  # noqa: E731
        elif mode == "predict":
            predict = dsa.Predict("question -> answer")
            predict.lm = lm
            call = lambda q: predict(question=q).answer  # noqa: E731
        else:
            raise SystemExit(f"mode must be 'program' or 'predict', got {mode!r}")

        def worker(i: int) -> None:
            for j in range(per_thread):
                call(f"q{i}-{j}")

        wall, cpu = timed_threads(worker, threads)
        n = threads * per_thread
        print(
            f"{mode} {threads} in flight, lm_processes={processes}: {n / wall:.0f} calls/s, "
            f"{cpu / n * 1e6:.0f} us CPU/call (this process)"
        )
    finally:
        app.stop()
        lm.close()
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
