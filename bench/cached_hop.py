"""The cached-call hop in isolation: raw Pykka ask vs ``handle.call`` on a served Predict
whose memory cache holds the answer vs the same Predict in-process, one thread.

    .venv/bin/python bench/cached_hop.py                # as the OS schedules the threads
    taskset -c 0 .venv/bin/python bench/cached_hop.py   # every thread on one CPU

``bench_runtime.py`` measures the same three numbers for issue 12's target (handle.call
below a raw ask). This script exists to show where the hop's cost comes from: on a VM whose
idle vCPUs sleep, a message between threads on two CPUs pays a cross-CPU wake-up each way,
and the woken side then runs on a cold cache. Pinned to one CPU, the same code answers a
cached call in much less time. Also printed: the time the module actor spends handling one
call (from receiving the ``Call`` to answering it), to tell the wake-ups from the work,
and the process's CPU time per call (all threads), steadier than wall time on a busy machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import pykka

import dspy_actors as dsa
from dspy_actors.lm.cache import Cache
from dspy_actors.runtime import _module_actor as module_actor
from dspy_actors.testing import SimLM

QUESTION = "What is 2 + 3?"


class Constant(pykka.ThreadingActor):
    def on_receive(self, message: Any) -> Any:
        return 42


def per_call_us(fn: Callable[[], object], n: int) -> tuple[float, float]:
    """Wall time and the process's CPU time (every thread) per call, in us. On a busy
    machine the CPU time is the steadier of the two: waiting for a core adds no CPU."""
    c0, t0 = time.process_time(), time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e6, (time.process_time() - c0) / n * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("-n", type=int, default=3000, help="calls per loop")
    args = parser.parse_args()

    handler_s = [0.0, 0]
    original = module_actor.ModuleActor.on_receive

    def timed(self: module_actor.ModuleActor, message: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return original(self, message)
        finally:
            handler_s[0] += time.perf_counter() - t0
            handler_s[1] += 1

    module_actor.ModuleActor.on_receive = timed  # type: ignore[method-assign]
    with SimLM() as sim:
        lm = dsa.LM(
            "openai/sim-model",
            api_base=sim.openai_base,
            api_key="sim",
            cache_store=Cache(disk_path=None),
        )
        raw = Constant.start()
        try:
            with dsa.start(lm=lm, data_dir=tempfile.mkdtemp(), lm_max_in_flight=2) as app:
                handle = app.serve("cached", dsa.Predict("question -> answer"))
                inproc = dsa.Predict("question -> answer")
                inproc.lm = lm
                handle.call(question=QUESTION)  # fills the cache
                before = sim.request_count
                rows = []
                for _ in range(args.rounds):
                    r, r_cpu = per_call_us(lambda: raw.ask("x", timeout=10), args.n)
                    handler_s[:] = [0.0, 0]
                    a, a_cpu = per_call_us(lambda: handle.call(question=QUESTION), args.n)
                    h = handler_s[0] / max(1, handler_s[1]) * 1e6
                    p, p_cpu = per_call_us(lambda: inproc(question=QUESTION), args.n)
                    rows.append((r, a, h, p, a - r, r_cpu, a_cpu, p_cpu, a_cpu - r_cpu))
                assert sim.request_count == before, "the timed loops must be cache hits"
        finally:
            raw.stop(timeout=10)
            lm.close()
    cpus = sorted(os.sched_getaffinity(0))
    print(f"CPUs allowed: {cpus}; medians over {args.rounds} rounds of {args.n} calls, us/call")
    names = (
        "raw ask",
        "handle.call",
        "actor handling",
        "Predict in-process",
        "call - ask",
        "raw ask CPU",
        "handle.call CPU",
        "in-process CPU",
        "call - ask CPU",
    )
    for i, name in enumerate(names):
        print(f"  {name:<20} {statistics.median(row[i] for row in rows):7.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
