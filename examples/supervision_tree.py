"""A supervision tree that keeps serving while its workers are crashed on purpose.

Run it:  .venv/bin/python examples/supervision_tree.py

It starts this tree (the shape dspy_actors' runtime uses):

    root (one_for_one)
    ├── store      a worker holding a counter
    ├── workers    DynamicSupervisor with 8 named workers
    └── jobs       TaskSupervisor for background jobs

then 16 client threads call the workers *by name* while a chaos thread crashes a random
worker every 20 ms. Every call gets an answer or a clear error; none hangs; at the end the
tree is healthy again, and a summary shows what happened.
"""

from __future__ import annotations

import logging
import random
import statistics
import threading
import time
from collections import Counter
from typing import Any

import pykka
import structlog

import supervisors as sup

WORKERS = 8
CLIENTS = 16
SECONDS = 2.0


class Squarer(sup.SupervisedActor):
    """A worker: squares numbers; crashes when told "crash"."""

    def on_receive(self, message: Any) -> Any:
        if message == "crash":
            raise RuntimeError("crashed on purpose by the chaos thread")
        return message * message


class Store(sup.SupervisedActor):
    """Counts the jobs that finished."""

    def __init__(self) -> None:
        super().__init__()
        self.done = 0

    def on_receive(self, message: Any) -> Any:
        if message == "job_done":
            self.done += 1
        return self.done


def main() -> None:
    # Keep the demo's output readable: supervision events at warning and above only.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    logging.getLogger("pykka").setLevel(logging.CRITICAL)
    restarts = Counter[str]()
    unsubscribe = sup.subscribe(
        lambda e: restarts.update([e.child_id or "?"]) if e.kind == "child_restarted" else None
    )

    root = sup.Supervisor.start(
        [
            sup.ChildSpec("store", Store, name="store"),
            sup.DynamicSupervisor.child_spec("workers", intensity=1000, period=1.0),
            sup.TaskSupervisor.child_spec("jobs", max_concurrency=4, intensity=1000),
        ],
        name="root",
    )
    workers = root.supervisor("workers")
    for n in range(WORKERS):
        workers.start_child(sup.ChildSpec(f"w{n}", Squarer, name=f"worker-{n}"))
    print("Started:\n" + root.tree().render() + "\n")

    outcomes: Counter[str] = Counter()
    latencies: list[float] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            name = f"worker-{rng.randrange(WORKERS)}"
            began = time.perf_counter()
            try:
                value = rng.randrange(1000)
                assert sup.registry.ask(name, value, timeout=5.0) == value * value
                outcome = "answered"
            except (sup.NotRegistered, pykka.ActorDeadError):
                outcome = "failed: worker restarting"
            with lock:
                outcomes[outcome] += 1
                latencies.append(time.perf_counter() - began)

    def chaos() -> None:
        rng = random.Random(0)
        while not stop.wait(0.02):
            ref = sup.registry.whereis(f"worker-{rng.randrange(WORKERS)}")
            if ref is not None:
                ref.tell("crash")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    threads.append(threading.Thread(target=chaos))
    for t in threads:
        t.start()
    time.sleep(SECONDS)
    stop.set()
    for t in threads:
        t.join(timeout=10.0)
    hung = sum(t.is_alive() for t in threads)

    # Let the last restarts finish, then look at the tree.
    deadline = time.monotonic() + 5.0
    while workers.count_children().active < WORKERS and time.monotonic() < deadline:
        time.sleep(0.01)
    print("After the chaos:\n" + root.tree().render() + "\n")
    ordered = sorted(latencies)
    print(
        f"calls: {sum(outcomes.values())}  "
        + "  ".join(f"{k}: {v}" for k, v in sorted(outcomes.items()))
        + f"  hung: {hung}"
    )
    print(
        f"restarts: {sum(restarts.values())}  "
        f"latency p50 {statistics.median(ordered) * 1e6:.0f} us, "
        f"p99 {ordered[int(len(ordered) * 0.99)] * 1e6:.0f} us"
    )
    print(f"healthy: {workers.count_children().active == WORKERS}")

    # Background jobs: each runs in its own supervised actor; a crashed job's future
    # carries its exception, and a finished one's its result.
    jobs = root.supervisor("jobs")
    assert isinstance(jobs, sup.TaskSupervisor)

    def job(n: int) -> int:
        if n % 10 == 0:
            raise ValueError(f"job {n} failed")
        sup.registry.lookup("store").tell("job_done")
        return n

    futures = [jobs.submit(job, n) for n in range(100)]
    results = Counter("ok" if f.exception(timeout=10.0) is None else "raised" for f in futures)
    stored = sup.registry.ask("store", "count", timeout=5.0)
    print(f"jobs: {dict(results)}, store counted {stored}")
    root.stop()
    unsubscribe()


if __name__ == "__main__":
    main()
